// Where loop() gets its image. Replace get_image() with your camera driver on a board.
#ifndef TINYMOE_FIRMWARE_IMAGE_PROVIDER_H_
#define TINYMOE_FIRMWARE_IMAGE_PROVIDER_H_

#include <cstdint>

// Fills `pixels` (kInputHeight x kInputWidth x kInputChannels bytes, RGB, 0..255).
// Returns false if no image is available.
bool get_image(uint8_t* pixels);

#endif  // TINYMOE_FIRMWARE_IMAGE_PROVIDER_H_
