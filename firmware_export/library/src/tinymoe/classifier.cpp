// See classifier.h. One interpreter, one static tensor arena of kTensorArenaSize bytes
// (model_settings.h: the arena measured for this model plus a margin).
#include "classifier.h"

#include "labels.h"
#include "model_data.h"
#include "model_settings.h"
#include "op_resolver.h"
#include "tensorflow/lite/micro/micro_interpreter.h"
#include "tensorflow/lite/schema/schema_generated.h"

#if defined(ARDUINO)
#include <Arduino.h>
#endif
// The library's own TFLite Micro prints through a callback; a TFLite Micro brought by the
// platform (ESP-IDF's esp-tflite-micro) prints its own way.
#if __has_include("tensorflow/lite/micro/cortex_m_generic/debug_log_callback.h")
#include "tensorflow/lite/micro/cortex_m_generic/debug_log_callback.h"
#define TINYMOE_LOG_CALLBACK 1
#endif

namespace tinymoe {
namespace {

ModelOpResolver op_resolver;
alignas(16) uint8_t tensor_arena[kTensorArenaSize];
tflite::MicroInterpreter* interpreter = nullptr;

#if defined(ARDUINO)
void PrintToSerial(const char* text) { Serial.print(text); }
#endif

}  // namespace

void SetLogOutput(void (*print)(const char* text)) {
#if defined(TINYMOE_LOG_CALLBACK)
  RegisterDebugLogCallback(print);
#else
  (void)print;
#endif
}

bool Classifier::begin() {
  if (interpreter != nullptr) return true;
#if defined(ARDUINO)
  static bool log_set = false;
  if (!log_set) SetLogOutput(PrintToSerial);
  log_set = true;
#endif
  const tflite::Model* model = tflite::GetModel(TINYMOE_MODEL_DATA);
  if (model->version() != TFLITE_SCHEMA_VERSION) {
    error_ = "the model's schema version is not this TFLite Micro's";
    return false;
  }
  if (RegisterModelOps(op_resolver) != kTfLiteOk) {
    error_ = "could not register the model's ops";
    return false;
  }
  static tflite::MicroInterpreter static_interpreter(model, op_resolver, tensor_arena,
                                                     kTensorArenaSize);
  if (static_interpreter.AllocateTensors() != kTfLiteOk) {
    error_ = "AllocateTensors failed: is kTensorArenaSize (model_settings.h) too small?";
    return false;
  }
  TfLiteTensor* input = static_interpreter.input(0);
  if (input->type != kTfLiteInt8 || input->bytes != static_cast<size_t>(kInputSize)) {
    error_ = "the model's input is not the int8 image model_settings.h describes";
    return false;
  }
  interpreter = &static_interpreter;
  error_ = "";
  return true;
}

Result Classifier::classify(const uint8_t* frame, int width, int height, PixelFormat format) {
  Result result = {};
  if (interpreter == nullptr) {
    error_ = "classify() before a successful begin()";
    return result;
  }
  if (frame == nullptr ||
      !FrameToInput(frame, width, height, format, kInputWidth, kInputHeight, kInputScale,
                    kInputZeroPoint, interpreter->input(0)->data.int8)) {
    error_ = "the frame is empty, or its size does not suit its pixel format";
    return result;
  }
  if (interpreter->Invoke() != kTfLiteOk) {
    error_ = "Invoke failed";
    return result;
  }
  const int8_t* output = interpreter->output(0)->data.int8;
  result.count = kNumClasses < kMaxTop ? kNumClasses : kMaxTop;
  for (int j = 0; j < result.count; ++j) result.top[j] = {-1, "", 0.0f};
  for (int c = 0; c < kNumClasses; ++c) {
    const float score = kOutputScale * static_cast<float>(output[c] - kOutputZeroPoint);
    for (int j = 0; j < result.count; ++j) {
      if (result.top[j].index < 0 || score > result.top[j].score) {
        for (int m = result.count - 1; m > j; --m) result.top[m] = result.top[m - 1];
        result.top[j] = {c, kLabels[c], score};
        break;
      }
    }
  }
  result.ok = true;
  error_ = "";
  return result;
}

size_t Classifier::arena_used_bytes() const {
  return interpreter == nullptr ? 0 : interpreter->arena_used_bytes();
}

size_t Classifier::tensor_arena_size() { return kTensorArenaSize; }

const int8_t* Classifier::output() const {
  return interpreter == nullptr ? nullptr : interpreter->output(0)->data.int8;
}

const int8_t* Classifier::input() const {
  return interpreter == nullptr ? nullptr : interpreter->input(0)->data.int8;
}

int Classifier::num_classes() { return kNumClasses; }
int Classifier::input_width() { return kInputWidth; }
int Classifier::input_height() { return kInputHeight; }

}  // namespace tinymoe
