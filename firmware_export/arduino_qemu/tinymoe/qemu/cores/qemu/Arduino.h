// The Arduino API that tinymoe's examples use, for QEMU's MPS2 boards: setup()/loop(),
// Serial (printing through the board's UART; nothing is read), millis() and delay().
#ifndef TINYMOE_QEMU_ARDUINO_H_
#define TINYMOE_QEMU_ARDUINO_H_

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef uint8_t byte;

#define DEC 10
#define HEX 16

void setup();
void loop();
unsigned long millis();
void delay(unsigned long ms);

class HardwareSerial {
 public:
  void begin(unsigned long) {}
  explicit operator bool() const { return true; }
  size_t write(uint8_t c);
  size_t write(const uint8_t* data, size_t size);
  size_t print(const char* text);
  size_t print(char c) { return write(static_cast<uint8_t>(c)); }
  size_t print(unsigned long value, int base = DEC);
  size_t print(long value, int base = DEC);
  size_t print(unsigned int value, int base = DEC) { return print(static_cast<unsigned long>(value), base); }
  size_t print(int value, int base = DEC) { return print(static_cast<long>(value), base); }
  size_t print(double value, int digits = 2);
  size_t println() { return print("\r\n"); }
  template <typename T>
  size_t println(T value) { return print(value) + println(); }
  template <typename T>
  size_t println(T value, int format) { return print(value, format) + println(); }
  void flush() {}
};

extern HardwareSerial Serial;

#endif  // TINYMOE_QEMU_ARDUINO_H_
