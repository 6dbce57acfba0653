// See preprocess.h. The arithmetic follows TensorFlow's ScaleAndTranslate kernel (what
// tf.image.resize(..., antialias=True) runs for bilinear) step for step, in float: the same
// spans, the same triangle weights normalised to sum to one, the rows summed first and then
// the columns, each sum started at zero and taken in the same order. Fused multiply-adds would
// round differently from TensorFlow's x86 build (which has none), so they are turned off here.
#include "preprocess.h"

#include <math.h>

#if defined(__clang__)
#pragma clang fp contract(off)
#define TINYMOE_NO_FMA
#elif defined(__GNUC__)
#define TINYMOE_NO_FMA __attribute__((optimize("fp-contract=off")))
#else
#define TINYMOE_NO_FMA
#endif

namespace tinymoe {
namespace {

// The most source pixels one output pixel reads along an axis: frames up to about 31 times
// the model's input side.
constexpr int kMaxTaps = 64;

struct Span {
  int start;
  int count;
  float weights[kMaxTaps];
};

// The triangle kernel's taps for output index `out` (TensorFlow's ComputeSpansCore with
// translation 0 and antialiasing). False if the span is longer than kMaxTaps.
TINYMOE_NO_FMA bool ComputeSpan(int out, int in_size, int out_size, Span* span) {
  const float scale = static_cast<float>(out_size) / static_cast<float>(in_size);
  const float inv_scale = 1.0 / scale;  // in double, rounded to float, as TensorFlow does
  const float kernel_scale = inv_scale > 1.0f ? inv_scale : 1.0f;
  const float one_over_kernel_scale = 1.0f / kernel_scale;
  const float radius = 1.0f * kernel_scale;
  const float sample = (static_cast<float>(out) + 0.5f) * inv_scale + (-inv_scale * 0.0f);
  long start = static_cast<long>(ceilf(sample - radius - 0.5f));
  long end = static_cast<long>(floorf(sample + radius - 0.5f));
  start = start < 0 ? 0 : (start > in_size - 1 ? in_size - 1 : start);
  end = (end < 0 ? 0 : (end > in_size - 1 ? in_size - 1 : end)) + 1;
  span->start = static_cast<int>(start);
  span->count = static_cast<int>(end - start);
  if (span->count > kMaxTaps) return false;
  float total = 0.0f;
  for (int i = 0; i < span->count; ++i) {
    const float position = static_cast<float>(span->start + i) + 0.5f - sample;
    const float x = fabsf(position * one_over_kernel_scale);
    const float weight = x < 1.0f ? 1.0f - x : 0.0f;
    total += weight;
    span->weights[i] = weight;
  }
  const float one_over_total = 1.0f / total;
  for (int i = 0; i < span->count; ++i) span->weights[i] *= one_over_total;
  return true;
}

inline uint8_t Clamp255(int value) {
  return static_cast<uint8_t>(value < 0 ? 0 : (value > 255 ? 255 : value));
}

// One pixel of the frame as R, G, B.
inline void Fetch(const uint8_t* frame, int width, PixelFormat format, int row, int col,
                  float rgb[3]) {
  const int32_t index = static_cast<int32_t>(row) * width + col;
  switch (format) {
    case PixelFormat::kRGB888: {
      const uint8_t* p = frame + 3 * index;
      rgb[0] = p[0];
      rgb[1] = p[1];
      rgb[2] = p[2];
      return;
    }
    case PixelFormat::kRGB565:
    case PixelFormat::kRGB565BigEndian: {
      const uint8_t* p = frame + 2 * index;
      const unsigned word = format == PixelFormat::kRGB565 ? (p[0] | (p[1] << 8))
                                                           : ((p[0] << 8) | p[1]);
      const unsigned r = (word >> 11) & 0x1F, g = (word >> 5) & 0x3F, b = word & 0x1F;
      rgb[0] = static_cast<float>((r << 3) | (r >> 2));
      rgb[1] = static_cast<float>((g << 2) | (g >> 4));
      rgb[2] = static_cast<float>((b << 3) | (b >> 2));
      return;
    }
    case PixelFormat::kGrayscale:
      rgb[0] = rgb[1] = rgb[2] = frame[index];
      return;
    case PixelFormat::kYUV422: {
      // JPEG's YCbCr -> RGB in 16-bit fixed point (as libjpeg computes it).
      const uint8_t* pair = frame + 2 * (index & ~1);
      const int y = pair[(index & 1) * 2], cb = pair[1] - 128, cr = pair[3] - 128;
      const int32_t half = 1 << 15;
      rgb[0] = Clamp255(y + ((91881 * cr + half) >> 16));
      rgb[1] = Clamp255(y + ((-22554 * cb - 46802 * cr + half) >> 16));
      rgb[2] = Clamp255(y + ((116130 * cb + half) >> 16));
      return;
    }
  }
}

// Calls store(y, x, rgb) with the resampled float value of every output pixel.
template <typename Store>
TINYMOE_NO_FMA bool Resample(const uint8_t* frame, int width, int height, PixelFormat format,
                             int out_width, int out_height, Store store) {
  if (FrameBytes(format, width, height) == 0 || out_width <= 0 || out_height <= 0) {
    return false;
  }
  Span row_span, col_span;
  for (int y = 0; y < out_height; ++y) {
    if (!ComputeSpan(y, height, out_height, &row_span)) return false;
    for (int x = 0; x < out_width; ++x) {
      if (!ComputeSpan(x, width, out_width, &col_span)) return false;
      float out[3] = {0.0f, 0.0f, 0.0f};
      for (int j = 0; j < col_span.count; ++j) {
        // The rows first: the value TensorFlow's intermediate image holds at (y, column).
        float column[3] = {0.0f, 0.0f, 0.0f};
        for (int i = 0; i < row_span.count; ++i) {
          float rgb[3];
          Fetch(frame, width, format, row_span.start + i, col_span.start + j, rgb);
          for (int c = 0; c < 3; ++c) column[c] += rgb[c] * row_span.weights[i];
        }
        for (int c = 0; c < 3; ++c) out[c] += column[c] * col_span.weights[j];
      }
      store(y, x, out);
    }
  }
  return true;
}

// read_image's np.clip(np.round(...), 0, 255): halves to even.
inline int WholePixel(float value) {
  const float rounded = rintf(value);
  return rounded < 0.0f ? 0 : (rounded > 255.0f ? 255 : static_cast<int>(rounded));
}

}  // namespace

int32_t FrameBytes(PixelFormat format, int width, int height) {
  if (width <= 0 || height <= 0) return 0;
  const int32_t pixels = static_cast<int32_t>(width) * height;
  switch (format) {
    case PixelFormat::kRGB888:
      return 3 * pixels;
    case PixelFormat::kRGB565:
    case PixelFormat::kRGB565BigEndian:
      return 2 * pixels;
    case PixelFormat::kGrayscale:
      return pixels;
    case PixelFormat::kYUV422:
      return width % 2 == 0 ? 2 * pixels : 0;
  }
  return 0;
}

bool FrameToPixels(const uint8_t* frame, int width, int height, PixelFormat format,
                   int output_width, int output_height, uint8_t* pixels) {
  return Resample(frame, width, height, format, output_width, output_height,
                  [&](int y, int x, const float* rgb) {
                    uint8_t* out = pixels + 3 * (static_cast<int32_t>(y) * output_width + x);
                    for (int c = 0; c < 3; ++c) out[c] = static_cast<uint8_t>(WholePixel(rgb[c]));
                  });
}

bool FrameToInput(const uint8_t* frame, int width, int height, PixelFormat format,
                  int input_width, int input_height, float input_scale,
                  int input_zero_point, int8_t* input) {
  return Resample(frame, width, height, format, input_width, input_height,
                  [&](int y, int x, const float* rgb) {
                    int8_t* out = input + 3 * (static_cast<int32_t>(y) * input_width + x);
                    for (int c = 0; c < 3; ++c) {
                      // TFLite's QUANTIZE and tinymoe.export.quantize: halves away from zero.
                      const float ratio = static_cast<float>(WholePixel(rgb[c])) / input_scale;
                      const int q = static_cast<int>(lroundf(ratio)) + input_zero_point;
                      out[c] = static_cast<int8_t>(q < -128 ? -128 : (q > 127 ? 127 : q));
                    }
                  });
}

}  // namespace tinymoe
