// Start-up code of the Cortex-M images run under QEMU (mps2-an385 for the Cortex-M3,
// mps2-an500 for the Cortex-M7; both boards have the memory map of mps2_an385.ld): the
// vector table, the reset handler (enable the FPU of a hard-float image, copy .data, zero
// .bss, run the C++ constructors, call main with the semihosting command line, exit through
// semihosting) and a fault handler that reports the fault and exits instead of hanging.
// Input and output go through newlib's semihosting library (--specs=rdimon.specs).
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>

extern "C" {
extern uint32_t __data_start, __data_end, __data_load, __bss_start__, __bss_end__;
extern uint32_t __stack_top;
void __libc_init_array();
void initialise_monitor_handles();
int main(int argc, char** argv);
void Reset_Handler();
void Fault_Handler();
// -nostartfiles drops crti.o and crtbegin.o: __libc_init_array still calls _init and
// _fini, and destructors of static objects are registered against __dso_handle.
void _init() {}
void _fini() {}
void* __dso_handle = nullptr;
}

namespace {

// ARM semihosting call (the BKPT 0xAB convention for M-profile).
int semihost(int operation, void* argument) {
  register int r0 asm("r0") = operation;
  register void* r1 asm("r1") = argument;
  asm volatile("bkpt 0xab" : "+r"(r0) : "r"(r1) : "memory");
  return r0;
}

constexpr int kSysGetCmdline = 0x15;
constexpr int kMaxArgs = 8;
char command_line[256];
char* arguments[kMaxArgs + 1];

// Splits QEMU's -semihosting-config arg=... values (joined by spaces) into argv.
int read_arguments() {
  struct {
    char* buffer;
    int length;
  } block = {command_line, sizeof(command_line) - 1};
  if (semihost(kSysGetCmdline, &block) != 0) return 0;
  command_line[block.length] = '\0';
  int count = 0;
  for (char* token = std::strtok(command_line, " "); token != nullptr && count < kMaxArgs;
       token = std::strtok(nullptr, " ")) {
    arguments[count++] = token;
  }
  arguments[count] = nullptr;
  return count;
}

}  // namespace

void Reset_Handler() {
#if defined(__ARM_FP)
  // A hard-float image (Cortex-M7): give the FPU (coprocessors 10 and 11) full access in
  // CPACR before any floating-point instruction runs.
  *reinterpret_cast<volatile uint32_t*>(0xE000ED88) |= 0xFu << 20;
  asm volatile("dsb\n\tisb" ::: "memory");
#endif
  uint32_t* source = &__data_load;
  for (uint32_t* target = &__data_start; target < &__data_end;) *target++ = *source++;
  for (uint32_t* target = &__bss_start__; target < &__bss_end__;) *target++ = 0;
  initialise_monitor_handles();
  __libc_init_array();
  int argc = read_arguments();
  std::exit(main(argc, arguments));
}

void Fault_Handler() {
  uint32_t ipsr;
  asm volatile("mrs %0, ipsr" : "=r"(ipsr));
  std::fprintf(stderr, "Fault: exception %lu (3 = hard fault, 4-6 = memory/bus/usage fault).\n",
               static_cast<unsigned long>(ipsr & 0x1ff));
  std::exit(3);
}

// Initial stack pointer, reset and the fixed exceptions (NMI .. SysTick); no interrupts used.
__attribute__((section(".isr_vector"), used)) void (*const vector_table[16])() = {
    reinterpret_cast<void (*)()>(&__stack_top),
    Reset_Handler,
    Fault_Handler, Fault_Handler, Fault_Handler, Fault_Handler, Fault_Handler,
    nullptr, nullptr, nullptr, nullptr,
    Fault_Handler, Fault_Handler, nullptr, Fault_Handler, Fault_Handler,
};
