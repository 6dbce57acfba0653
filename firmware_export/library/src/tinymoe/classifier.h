// tinymoe's on-device API: a camera frame in, the top species with their scores out.
//
//   tinymoe::Classifier classifier;
//   if (!classifier.begin()) { /* classifier.error() says why */ }
//   tinymoe::Result result = classifier.classify(frame, 160, 120, tinymoe::PixelFormat::kRGB565);
//   if (result.ok) print(result.top[0].label, result.top[0].score);
//
// The model, its labels and its tensor arena are compiled in (model_data.cpp, labels.cpp,
// model_settings.h: written by `tinymoe export`, never edited by hand). The frame is resized
// to the model's input on the device exactly as tinymoe.data.read_image resizes photos in
// training (preprocess.h), so any camera resolution works.
#ifndef TINYMOE_CLASSIFIER_H_
#define TINYMOE_CLASSIFIER_H_

#include <stddef.h>
#include <stdint.h>

#include "preprocess.h"

namespace tinymoe {

// One class and its score: the model's output for it, dequantised (a logit; higher is
// more likely).
struct Prediction {
  int index;
  const char* label;
  float score;
};

constexpr int kMaxTop = 3;

struct Result {
  bool ok;      // false: see Classifier::error()
  int count;    // predictions in top (kMaxTop, or fewer if the model has fewer classes)
  Prediction top[kMaxTop];  // best first
};

class Classifier {
 public:
  // Loads the model and allocates its tensors in the static arena. Call once.
  bool begin();

  // Classifies one frame of width x height pixels in `format`.
  Result classify(const uint8_t* frame, int width, int height, PixelFormat format);

  // The arena the interpreter really uses (after begin()); the arena reserved is
  // tensor_arena_size().
  size_t arena_used_bytes() const;
  static size_t tensor_arena_size();

  // The model's raw int8 output of the last classify() (num_classes() values).
  const int8_t* output() const;
  // The int8 input tensor: what the last classify() gave the model.
  const int8_t* input() const;
  static int num_classes();
  static int input_width();
  static int input_height();

  // What went wrong, or "" if nothing.
  const char* error() const { return error_; }

 private:
  const char* error_ = "";
};

// Where TFLite Micro's own messages go (allocation failures and the like). On Arduino they go
// to Serial unless set; elsewhere nowhere until set.
void SetLogOutput(void (*print)(const char* text));

}  // namespace tinymoe

#endif  // TINYMOE_CLASSIFIER_H_
