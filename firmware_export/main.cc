// The tinymoe firmware app for a host build and for the Cortex-M3/M7 images under QEMU:
//   ./classify [IMAGE.rgb]
// IMAGE.rgb holds exactly kInputHeight x kInputWidth x kInputChannels raw bytes (RGB,
// 0..255), e.g. written with numpy: image.astype("uint8").tofile("image.rgb"). Without it, a
// grey image is classified. Under QEMU the file is read through semihosting.
#include <cstdint>
#include <cstdio>
#include <cstring>

#include "image_provider.h"
#include "main_functions.h"
#include "model_data.h"
#include "model_settings.h"
#include "tensorflow/lite/micro/micro_log.h"

static const char* image_path = nullptr;

bool get_image(uint8_t* pixels) {
  if (image_path == nullptr) {
    std::memset(pixels, 128, kInputSize);
    return true;
  }
  FILE* file = std::fopen(image_path, "rb");
  if (file == nullptr) {
    MicroPrintf("Cannot open %s.", image_path);
    return false;
  }
  size_t read = std::fread(pixels, 1, kInputSize, file);
  bool longer = read == static_cast<size_t>(kInputSize) && std::fgetc(file) != EOF;
  std::fclose(file);
  if (read != static_cast<size_t>(kInputSize) || longer) {
    MicroPrintf("%s has %s%d bytes; the model takes exactly %d (%dx%dx%d RGB).", image_path,
                longer ? "more than " : "", static_cast<int>(read), kInputSize, kInputHeight,
                kInputWidth, kInputChannels);
    return false;
  }
  return true;
}

#if defined(__arm__)
// Linker-script symbols (mps2_an385.ld): everything a board keeps in flash.
extern "C" const char __flash_start[], __flash_end[];

static void print_flash_footprint() {
  MicroPrintf("Flash: %d bytes (.text + .rodata + .data), of which the model array %d bytes.",
              static_cast<int>(__flash_end - __flash_start),
              static_cast<int>(TINYMOE_MODEL_DATA_SIZE));
}
#else
static void print_flash_footprint() {}
#endif

#if defined(TINYMOE_DEBUG_LOG_CALLBACK)
// cortex_m_generic's DebugLog hands each formatted piece to a callback: print it
// (semihosting under QEMU; a UART on a board).
#include "tensorflow/lite/micro/cortex_m_generic/debug_log_callback.h"

static void print_log(const char* text) { std::fputs(text, stdout); }
#endif

int main(int argc, char** argv) {
#if defined(TINYMOE_DEBUG_LOG_CALLBACK)
  RegisterDebugLogCallback(print_log);
#endif
  if (argc > 1) image_path = argv[1];
  print_flash_footprint();
  if (!setup_model()) return 1;
  return classify_and_print() ? 0 : 1;
}
