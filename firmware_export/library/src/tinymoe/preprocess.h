// Camera frame -> the model's int8 input, as tinymoe trains: the whole frame resized to the
// model's input with TensorFlow's antialiased bilinear resampling (tf.image.resize(...,
// antialias=True), what tinymoe.data.read_image does), rounded to whole pixel values, then
// quantised with the input tensor's scale and zero point. No crop: a frame of another aspect
// ratio is squeezed, as in training. Needs no TFLite Micro and allocates nothing.
#ifndef TINYMOE_PREPROCESS_H_
#define TINYMOE_PREPROCESS_H_

#include <stdint.h>

namespace tinymoe {

// How a frame's bytes hold its pixels (rows top to bottom, no padding between rows).
enum class PixelFormat {
  kRGB888,           // 3 bytes a pixel: R, G, B
  kRGB565,           // 2 bytes a pixel, a little-endian 16-bit word RRRRRGGGGGGBBBBB
  kRGB565BigEndian,  // the same word, high byte first (as many camera drivers give it)
  kGrayscale,        // 1 byte a pixel; the model sees R = G = B
  kYUV422,           // YUYV: 4 bytes per 2 pixels, Y0 U Y1 V (JPEG's full-range BT.601)
};

// Bytes one frame of `width` x `height` takes in `format` (0 if the sizes are not positive,
// or YUV422 with an odd width).
int32_t FrameBytes(PixelFormat format, int width, int height);

// Writes the model input (input_height x input_width x 3 int8 values) for one frame.
// Returns false, writing nothing, if a size is not positive or YUV422 has an odd width.
bool FrameToInput(const uint8_t* frame, int width, int height, PixelFormat format,
                  int input_width, int input_height, float input_scale,
                  int input_zero_point, int8_t* input);

// The same resampling, stopping at whole pixel values (input_height x input_width x 3
// bytes, 0..255): what tinymoe.data.read_image returns for the frame.
bool FrameToPixels(const uint8_t* frame, int width, int height, PixelFormat format,
                   int output_width, int output_height, uint8_t* pixels);

}  // namespace tinymoe

#endif  // TINYMOE_PREPROCESS_H_
