// Host driver for tests/test_board_preprocess.py: runs the exported library's frame
// preprocessing (src/tinymoe/preprocess.cpp) on raw frames, one per line of standard input:
//   FORMAT WIDTH HEIGHT FRAME_FILE OUT_WIDTH OUT_HEIGHT SCALE ZERO_POINT PIXELS_FILE INPUT_FILE
// FORMAT is the PixelFormat's number. Writes the whole pixels and the int8 input tensor.
#include <cstdio>
#include <vector>

#include "tinymoe/preprocess.h"

int main() {
  int format, width, height, out_width, out_height, zero_point;
  float scale;
  char frame_path[1024], pixels_path[1024], input_path[1024];
  while (std::scanf("%d %d %d %1023s %d %d %f %d %1023s %1023s", &format, &width, &height,
                    frame_path, &out_width, &out_height, &scale, &zero_point, pixels_path,
                    input_path) == 10) {
    const auto pixel_format = static_cast<tinymoe::PixelFormat>(format);
    std::vector<uint8_t> frame(tinymoe::FrameBytes(pixel_format, width, height));
    std::FILE* file = std::fopen(frame_path, "rb");
    if (file == nullptr || std::fread(frame.data(), 1, frame.size(), file) != frame.size()) {
      std::fprintf(stderr, "cannot read %s\n", frame_path);
      return 1;
    }
    std::fclose(file);
    const size_t size = static_cast<size_t>(out_width) * out_height * 3;
    std::vector<uint8_t> pixels(size);
    std::vector<int8_t> input(size);
    if (!tinymoe::FrameToPixels(frame.data(), width, height, pixel_format, out_width,
                                out_height, pixels.data()) ||
        !tinymoe::FrameToInput(frame.data(), width, height, pixel_format, out_width,
                               out_height, scale, zero_point, input.data())) {
      std::fprintf(stderr, "refused %s\n", frame_path);
      return 2;
    }
    file = std::fopen(pixels_path, "wb");
    std::fwrite(pixels.data(), 1, size, file);
    std::fclose(file);
    file = std::fopen(input_path, "wb");
    std::fwrite(input.data(), 1, size, file);
    std::fclose(file);
  }
  return 0;
}
