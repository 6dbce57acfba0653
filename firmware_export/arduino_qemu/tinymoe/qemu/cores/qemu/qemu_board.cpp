// The whole core for QEMU's MPS2 boards (mps2-an386, mps2-an500): the vector table and reset
// handler (FPU on, .data copied, .bss zeroed, constructors run), main() calling setup() and
// then loop() once, Serial and printf writing to the CMSDK UART0 (QEMU prints it on standard
// output), and the end of the run through semihosting (QEMU exits, status 0 on success).
#include <errno.h>
#include <stdio.h>
#include <sys/stat.h>

#include "Arduino.h"

extern "C" {
extern uint32_t __data_start, __data_end, __data_load, __bss_start__, __bss_end__;
extern uint32_t __stack_top;
void __libc_init_array();
void Reset_Handler();
void Fault_Handler();
void _init() {}
void _fini() {}
void* __dso_handle = nullptr;
int _write(int file, const char* data, int size);
void _exit(int status);
int _close(int) { return -1; }
int _fstat(int, struct stat* st) {
  st->st_mode = S_IFCHR;
  return 0;
}
int _isatty(int) { return 1; }
int _lseek(int, int, int) { return 0; }
int _read(int, char*, int) { return 0; }
int _kill(int, int) {
  errno = EINVAL;
  return -1;
}
int _getpid() { return 1; }
}

namespace {

// CMSDK APB UART0: DATA, STATE (bit 0: transmit buffer full), CTRL (bit 0: transmit on),
// BAUDDIV (the board's 25 MHz over 115200 baud).
volatile uint32_t* const kUart = reinterpret_cast<volatile uint32_t*>(0x40004000);

void UartStart() {
  kUart[4] = 217;
  kUart[2] = 1;
}

void UartPut(uint8_t c) {
  while (kUart[1] & 1u) {
  }
  kUart[0] = c;
}

// ARM semihosting's SYS_EXIT: QEMU exits with 0 for ADP_Stopped_ApplicationExit, else 1.
[[noreturn]] void SemihostingExit(bool success) {
  register uint32_t r0 asm("r0") = 0x18;
  register uint32_t r1 asm("r1") = success ? 0x20026 : 0x20024;
  asm volatile("bkpt 0xab" : : "r"(r0), "r"(r1) : "memory");
  while (true) {
  }
}

volatile unsigned long milliseconds = 0;

}  // namespace

HardwareSerial Serial;

size_t HardwareSerial::write(uint8_t c) {
  UartPut(c);
  return 1;
}

size_t HardwareSerial::write(const uint8_t* data, size_t size) {
  for (size_t i = 0; i < size; ++i) UartPut(data[i]);
  return size;
}

size_t HardwareSerial::print(const char* text) {
  size_t n = 0;
  while (text[n] != '\0') UartPut(static_cast<uint8_t>(text[n++]));
  return n;
}

size_t HardwareSerial::print(unsigned long value, int base) {
  char digits[33];
  int n = 0;
  do {
    const unsigned long digit = value % base;
    digits[n++] = static_cast<char>(digit < 10 ? '0' + digit : 'A' + digit - 10);
    value /= base;
  } while (value != 0);
  for (int i = n - 1; i >= 0; --i) UartPut(static_cast<uint8_t>(digits[i]));
  return n;
}

size_t HardwareSerial::print(long value, int base) {
  if (value >= 0 || base != DEC) return print(static_cast<unsigned long>(value), base);
  return print('-') + print(static_cast<unsigned long>(-value), base);
}

// As Arduino's Print::printFloat: rounded at `digits` decimals, then each digit in turn.
size_t HardwareSerial::print(double value, int digits) {
  if (isnan(value)) return print("nan");
  if (isinf(value)) return print("inf");
  size_t n = 0;
  if (value < 0.0) {
    n += print('-');
    value = -value;
  }
  double rounding = 0.5;
  for (int i = 0; i < digits; ++i) rounding /= 10.0;
  value += rounding;
  const unsigned long whole = static_cast<unsigned long>(value);
  double rest = value - static_cast<double>(whole);
  n += print(whole);
  if (digits > 0) n += print('.');
  for (int i = 0; i < digits; ++i) {
    rest *= 10.0;
    const unsigned int digit = static_cast<unsigned int>(rest);
    n += print(static_cast<char>('0' + digit));
    rest -= digit;
  }
  return n;
}

unsigned long millis() { return milliseconds; }

void delay(unsigned long ms) { milliseconds += ms; }

int _write(int, const char* data, int size) {
  for (int i = 0; i < size; ++i) UartPut(static_cast<uint8_t>(data[i]));
  return size;
}

void _exit(int status) { SemihostingExit(status == 0); }

int main() {
  setup();
  loop();
  return 0;
}

void Reset_Handler() {
#if defined(__ARM_FP)
  // Coprocessors 10 and 11 (the FPU): full access, before any floating-point instruction.
  *reinterpret_cast<volatile uint32_t*>(0xE000ED88) |= 0xFu << 20;
  asm volatile("dsb\n\tisb" ::: "memory");
#endif
  uint32_t* source = &__data_load;
  for (uint32_t* target = &__data_start; target < &__data_end;) *target++ = *source++;
  for (uint32_t* target = &__bss_start__; target < &__bss_end__;) *target++ = 0;
  UartStart();
  __libc_init_array();
  const int status = main();
  fflush(stdout);
  _exit(status);
}

void Fault_Handler() {
  static const char kMessage[] = "Fault: hard, memory, bus or usage fault.\r\n";
  for (const char* c = kMessage; *c != '\0'; ++c) UartPut(static_cast<uint8_t>(*c));
  SemihostingExit(false);
}

// Initial stack pointer, reset and the fixed exceptions; no interrupts are used.
__attribute__((section(".isr_vector"), used)) void (*const vector_table[16])() = {
    reinterpret_cast<void (*)()>(&__stack_top),
    Reset_Handler,
    Fault_Handler, Fault_Handler, Fault_Handler, Fault_Handler, Fault_Handler,
    nullptr, nullptr, nullptr, nullptr,
    Fault_Handler, Fault_Handler, nullptr, Fault_Handler, Fault_Handler,
};
