// tinymoe firmware template. Needs the files written by `tinymoe export` (model_data.h/.cc,
// model_settings.h, op_resolver.h, labels.h/.cc) on the include path.
#include "main_functions.h"

#include <cmath>

#include "image_provider.h"
#include "instruction_counter.h"
#include "labels.h"
#include "model_data.h"
#include "model_settings.h"
#include "op_resolver.h"
#include "tensorflow/lite/micro/micro_interpreter.h"
#include "tensorflow/lite/micro/micro_log.h"
#include "tensorflow/lite/schema/schema_generated.h"
#ifdef TINYMOE_RECORD_ALLOCATIONS
#include "tensorflow/lite/micro/recording_micro_interpreter.h"
#endif

namespace {

#ifdef TINYMOE_RECORD_ALLOCATIONS
// Where the arena goes: activations (head) against persistent per-op state (tail). The
// recording allocator keeps its own bookkeeping in the arena too (a few hundred bytes).
using Interpreter = tflite::RecordingMicroInterpreter;
#else
using Interpreter = tflite::MicroInterpreter;
#endif

ModelOpResolver op_resolver;
Interpreter* interpreter = nullptr;
// Under QEMU: instructions per op type, and per inference (instruction_counter.h).
tinymoe::OpInstructionProfiler profiler;
uint32_t inference_ticks = 0;
alignas(16) uint8_t tensor_arena[kTensorArenaSize];
uint8_t image[kInputSize];

}  // namespace

bool setup_model() {
  const tflite::Model* model = tflite::GetModel(TINYMOE_MODEL_DATA);
  if (model->version() != TFLITE_SCHEMA_VERSION) {
    MicroPrintf("Model schema version %d, this TFLite Micro expects %d.",
                static_cast<int>(model->version()), TFLITE_SCHEMA_VERSION);
    return false;
  }
  if (RegisterModelOps(op_resolver) != kTfLiteOk) {
    MicroPrintf("Could not register the model's ops.");
    return false;
  }
  tflite::MicroProfilerInterface* op_profiler = nullptr;
  if (tinymoe::kCountsInstructions) {
    tinymoe::StartInstructionCounter();
    op_profiler = &profiler;
  }
  static Interpreter static_interpreter(model, op_resolver, tensor_arena, kTensorArenaSize,
                                        nullptr, op_profiler);
  interpreter = &static_interpreter;
  if (interpreter->AllocateTensors() != kTfLiteOk) {
    MicroPrintf("AllocateTensors failed: kTensorArenaSize (%d bytes) is too small?",
                kTensorArenaSize);
    return false;
  }
  TfLiteTensor* input = interpreter->input(0);
  if (input->type != kTfLiteInt8 || input->bytes != static_cast<size_t>(kInputSize)) {
    MicroPrintf("Unexpected input tensor: type %d, %d bytes.", input->type,
                static_cast<int>(input->bytes));
    return false;
  }
  MicroPrintf("Model ready: arena uses %d of %d bytes.",
              static_cast<int>(interpreter->arena_used_bytes()), kTensorArenaSize);
  return true;
}

bool classify(const uint8_t* pixels, int k, int* top_classes, float* top_scores) {
  if (interpreter == nullptr) return false;
  int8_t* input = interpreter->input(0)->data.int8;
  for (int i = 0; i < kInputSize; ++i) {
    int q = static_cast<int>(std::lround(pixels[i] / kInputScale)) + kInputZeroPoint;
    input[i] = static_cast<int8_t>(q < -128 ? -128 : (q > 127 ? 127 : q));
  }
  profiler.Reset();
  const uint32_t start = tinymoe::InstructionTicks();
  if (interpreter->Invoke() != kTfLiteOk) {
    MicroPrintf("Invoke failed.");
    return false;
  }
  inference_ticks = tinymoe::InstructionTicks() - start;
  const int8_t* output = interpreter->output(0)->data.int8;
  for (int j = 0; j < k; ++j) {
    top_classes[j] = -1;
    top_scores[j] = -INFINITY;
  }
  for (int c = 0; c < kNumClasses; ++c) {
    float score = kOutputScale * (output[c] - kOutputZeroPoint);
    for (int j = 0; j < k; ++j) {
      if (score > top_scores[j]) {
        for (int m = k - 1; m > j; --m) {
          top_scores[m] = top_scores[m - 1];
          top_classes[m] = top_classes[m - 1];
        }
        top_scores[j] = score;
        top_classes[j] = c;
        break;
      }
    }
  }
  return true;
}

void setup() {
  if (!setup_model()) MicroPrintf("Setup failed.");
}

bool classify_and_print() {
  constexpr int kTop = kNumClasses < 3 ? kNumClasses : 3;
  int classes[kTop];
  float scores[kTop];
  if (!get_image(image) || !classify(image, kTop, classes, scores)) return false;
  for (int j = 0; j < kTop; ++j) {
    // Hundredths as integers: a board's printf may lack %f.
    long hundredths = std::lround(scores[j] * 100.0f);
    long magnitude = hundredths < 0 ? -hundredths : hundredths;
    MicroPrintf("%d. %s (%s%ld.%02ld)", j + 1, kLabels[classes[j]], hundredths < 0 ? "-" : "",
                magnitude / 100, magnitude % 100);
  }
  // The raw int8 output, two hex digits per class, so a host can check it byte for byte.
  constexpr int kPerLine = 32;
  const int8_t* output = interpreter->output(0)->data.int8;
  for (int start = 0; start < kNumClasses; start += kPerLine) {
    char line[2 * kPerLine + 1];
    int end = start + kPerLine < kNumClasses ? start + kPerLine : kNumClasses;
    for (int c = start; c < end; ++c) {
      MicroSnprintf(line + 2 * (c - start), 3, "%02x", static_cast<uint8_t>(output[c]));
    }
    MicroPrintf("int8 output: %s", line);
  }
  MicroPrintf("Arena used: %d bytes.", static_cast<int>(interpreter->arena_used_bytes()));
  if (tinymoe::kCountsInstructions) {
    MicroPrintf("Instructions per inference: %llu",
                static_cast<unsigned long long>(inference_ticks) *
                    tinymoe::kInstructionsPerTick);
    profiler.Print();
  }
#ifdef TINYMOE_RECORD_ALLOCATIONS
  interpreter->GetMicroAllocator().PrintAllocations();
#endif
  return true;
}

void loop() { classify_and_print(); }
