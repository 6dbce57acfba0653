// tinymoe firmware template: classify one image with the model exported by `tinymoe export`.
// setup() and loop() follow the Arduino convention; main.cc calls them on a host build.
#ifndef TINYMOE_FIRMWARE_MAIN_FUNCTIONS_H_
#define TINYMOE_FIRMWARE_MAIN_FUNCTIONS_H_

#include <cstdint>

// Loads the model, registers its ops and allocates the tensor arena. Returns false (and
// prints why) if any step fails.
bool setup_model();

// Classifies one image: `pixels` holds kInputHeight x kInputWidth x kInputChannels bytes,
// row-major, channels last, values 0..255 (the model rescales them itself). Writes the `k`
// best classes (indices into kLabels) and their scores (dequantised logits), best first.
// Returns false if inference failed.
bool classify(const uint8_t* pixels, int k, int* top_classes, float* top_scores);

// Classifies the image from get_image() (image_provider.h) and prints the top three labels
// with their scores, the raw int8 output (hex, "int8 output: ..." lines) and
// arena_used_bytes(). Returns false (and prints why) if there is no image or inference fails.
bool classify_and_print();

// Arduino-style entry points: setup() calls setup_model(); loop() calls classify_and_print().
void setup();
void loop();

#endif  // TINYMOE_FIRMWARE_MAIN_FUNCTIONS_H_
