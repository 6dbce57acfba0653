// Classifies the photo in photo.h (a real photo at its own size, embedded by `tinymoe export`)
// and prints the species with printf. Link it into your application (or build it as its own
// program, as tinymoe's tests do under QEMU) and call classify_photo() once; printf goes
// wherever your platform sends it (a UART on STM32 once retargeted, the console on ESP-IDF
// and Zephyr).
#include <stdio.h>

#include "photo.h"
#include "{{header}}"

namespace {

void print_log(const char* text) { fputs(text, stdout); }

// Hundredths as integers: a board's printf may lack %f.
void print_score(float score) {
  const long hundredths = score < 0 ? -static_cast<long>(-score * 100.0f + 0.5f)
                                    : static_cast<long>(score * 100.0f + 0.5f);
  const long magnitude = hundredths < 0 ? -hundredths : hundredths;
  printf("%s%ld.%02ld", hundredths < 0 ? "-" : "", magnitude / 100, magnitude % 100);
}

}  // namespace

int classify_photo() {
  tinymoe::SetLogOutput(print_log);
  tinymoe::Classifier classifier;
  if (!classifier.begin()) {
    printf("tinymoe: %s\n", classifier.error());
    return 1;
  }
  printf("Photo: %s, %dx%d RGB888\n", kPhotoName, kPhotoWidth, kPhotoHeight);
  tinymoe::Result result =
      classifier.classify(kPhoto, kPhotoWidth, kPhotoHeight, tinymoe::PixelFormat::kRGB888);
  if (!result.ok) {
    printf("tinymoe: %s\n", classifier.error());
    return 1;
  }
  printf("Species: %s\n", result.top[0].label);
  for (int i = 0; i < result.count; ++i) {
    printf("%d. %s (", i + 1, result.top[i].label);
    print_score(result.top[i].score);
    printf(")\n");
  }
  const int8_t* output = classifier.output();
  for (int start = 0; start < tinymoe::Classifier::num_classes(); start += 32) {
    printf("int8 output: ");
    for (int i = start; i < tinymoe::Classifier::num_classes() && i < start + 32; ++i) {
      printf("%02x", static_cast<unsigned>(static_cast<uint8_t>(output[i])));
    }
    printf("\n");
  }
  printf("Arena used: %lu of %lu bytes.\n",
         static_cast<unsigned long>(classifier.arena_used_bytes()),
         static_cast<unsigned long>(tinymoe::Classifier::tensor_arena_size()));
  return 0;
}
