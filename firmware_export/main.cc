// Host build of the tinymoe firmware template:
//   ./classify [IMAGE.rgb]
// IMAGE.rgb holds kInputHeight x kInputWidth x kInputChannels raw bytes (RGB, 0..255),
// e.g. written with numpy: image.astype("uint8").tofile("image.rgb"). Without it, a grey
// image is classified.
#include <cstdio>
#include <cstring>

#include "image_provider.h"
#include "main_functions.h"
#include "model_settings.h"

static const char* image_path = nullptr;

bool get_image(uint8_t* pixels) {
  if (image_path == nullptr) {
    std::memset(pixels, 128, kInputSize);
    return true;
  }
  FILE* file = std::fopen(image_path, "rb");
  if (file == nullptr) {
    std::fprintf(stderr, "Cannot open %s\n", image_path);
    return false;
  }
  size_t read = std::fread(pixels, 1, kInputSize, file);
  std::fclose(file);
  if (read != static_cast<size_t>(kInputSize)) {
    std::fprintf(stderr, "%s has %zu bytes, the model takes %d (%dx%dx%d).\n", image_path,
                 read, kInputSize, kInputHeight, kInputWidth, kInputChannels);
    return false;
  }
  return true;
}

int main(int argc, char** argv) {
  if (argc > 1) image_path = argv[1];
  if (!setup_model()) return 1;
  loop();
  return 0;
}
