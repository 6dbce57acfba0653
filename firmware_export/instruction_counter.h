// Instructions executed, counted on QEMU's MPS2 boards (mps2-an385, mps2-an500).
//
// QEMU models no Cortex-M cycles, caches or flash wait states, but with `-icount shift=0`
// (firmware_export/Makefile runs it so) each guest instruction advances virtual time by
// exactly one nanosecond. The boards' CMSDK APB timer 0 counts down at 25 MHz of that time:
// one tick every 40 instructions. Reading it around Invoke() and around each op (a
// MicroProfilerInterface) counts instructions to within 40 per reading. Only where the
// Makefile builds for those boards (TINYMOE_QEMU_MPS2) is anything read: on a real part
// 0x40000000 is some other peripheral (an STM32F7's TIM2), so kCountsInstructions is false
// there and on the host.
#ifndef TINYMOE_FIRMWARE_INSTRUCTION_COUNTER_H_
#define TINYMOE_FIRMWARE_INSTRUCTION_COUNTER_H_

#include <cstdint>
#include <cstring>

#include "tensorflow/lite/micro/micro_log.h"
#include "tensorflow/lite/micro/micro_profiler_interface.h"

namespace tinymoe {

#if defined(TINYMOE_QEMU_MPS2)
constexpr bool kCountsInstructions = true;
#else
constexpr bool kCountsInstructions = false;
#endif

// 1 GHz of virtual time (icount shift 0) over the timer's 25 MHz.
constexpr uint32_t kInstructionsPerTick = 40;

// The timer's ticks since StartInstructionCounter() (0 where there is no timer).
inline uint32_t InstructionTicks() {
#if defined(TINYMOE_QEMU_MPS2)
  volatile uint32_t* timer = reinterpret_cast<volatile uint32_t*>(0x40000000);
  return 0xFFFFFFFFu - timer[1];  // VALUE counts down from RELOAD
#else
  return 0;
#endif
}

// Starts the CMSDK timer free-running from 0xFFFFFFFF (171 s of virtual time: 171 G
// instructions before it wraps).
inline void StartInstructionCounter() {
#if defined(TINYMOE_QEMU_MPS2)
  volatile uint32_t* timer = reinterpret_cast<volatile uint32_t*>(0x40000000);
  timer[0] = 0;           // CTRL: stop
  timer[2] = 0xFFFFFFFFu;  // RELOAD
  timer[1] = 0xFFFFFFFFu;  // VALUE
  timer[0] = 1;           // CTRL: enable, no interrupt
#endif
}

// Instructions per op type, from the interpreter's profiler events (one per op invoke).
class OpInstructionProfiler : public tflite::MicroProfilerInterface {
 public:
  uint32_t BeginEvent(const char* tag) override {
    if (depth_ == kMaxDepth) return kMaxDepth;
    open_[depth_] = {Find(tag), InstructionTicks()};
    return depth_++;
  }

  void EndEvent(uint32_t handle) override {
    if (handle >= kMaxDepth) return;
    const Open& event = open_[handle];
    if (event.tag >= 0) {
      ticks_[event.tag] += InstructionTicks() - event.start;
      ++calls_[event.tag];
    }
    depth_ = handle;
  }

  void Reset() {
    num_tags_ = 0;
    depth_ = 0;
  }

  // One line per op type: "Op instructions: NAME INSTRUCTIONS CALLS".
  void Print() const {
    for (int i = 0; i < num_tags_; ++i) {
      MicroPrintf("Op instructions: %s %llu %d", tags_[i],
                  static_cast<unsigned long long>(ticks_[i] * kInstructionsPerTick),
                  calls_[i]);
    }
  }

 private:
  static constexpr uint32_t kMaxDepth = 8;
  static constexpr int kMaxTags = 64;
  struct Open {
    int tag;
    uint32_t start;
  };

  int Find(const char* tag) {
    for (int i = 0; i < num_tags_; ++i) {
      if (std::strcmp(tags_[i], tag) == 0) return i;
    }
    if (num_tags_ == kMaxTags) return -1;
    tags_[num_tags_] = tag;
    ticks_[num_tags_] = 0;
    calls_[num_tags_] = 0;
    return num_tags_++;
  }

  const char* tags_[kMaxTags];
  uint64_t ticks_[kMaxTags];
  int calls_[kMaxTags];
  int num_tags_ = 0;
  Open open_[kMaxDepth];
  uint32_t depth_ = 0;
};

}  // namespace tinymoe

#endif  // TINYMOE_FIRMWARE_INSTRUCTION_COUNTER_H_
