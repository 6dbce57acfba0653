// Classifies the photo in photo.h (a real photo at its own size, embedded by `tinymoe export`)
// and prints the species on the serial monitor. No camera needed: open the Serial Monitor
// (115200 baud) after uploading.
#include <{{header}}>

#include "photo.h"

tinymoe::Classifier classifier;

void printHex(const int8_t* values, int count) {
  const char* digits = "0123456789abcdef";
  for (int start = 0; start < count; start += 32) {
    Serial.print("int8 output: ");
    for (int i = start; i < count && i < start + 32; ++i) {
      const uint8_t value = static_cast<uint8_t>(values[i]);
      Serial.print(digits[value >> 4]);
      Serial.print(digits[value & 15]);
    }
    Serial.println();
  }
}

void setup() {
  Serial.begin(115200);
  while (!Serial) {
  }
  if (!classifier.begin()) {
    Serial.print("tinymoe: ");
    Serial.println(classifier.error());
    return;
  }
  Serial.print("Photo: ");
  Serial.print(kPhotoName);
  Serial.print(", ");
  Serial.print(kPhotoWidth);
  Serial.print("x");
  Serial.print(kPhotoHeight);
  Serial.println(" RGB888");
  tinymoe::Result result =
      classifier.classify(kPhoto, kPhotoWidth, kPhotoHeight, tinymoe::PixelFormat::kRGB888);
  if (!result.ok) {
    Serial.print("tinymoe: ");
    Serial.println(classifier.error());
    return;
  }
  Serial.print("Species: ");
  Serial.println(result.top[0].label);
  for (int i = 0; i < result.count; ++i) {
    Serial.print(i + 1);
    Serial.print(". ");
    Serial.print(result.top[i].label);
    Serial.print(" (");
    Serial.print(result.top[i].score, 2);
    Serial.println(")");
  }
  printHex(classifier.output(), tinymoe::Classifier::num_classes());
  Serial.print("Arena used: ");
  Serial.print(static_cast<unsigned long>(classifier.arena_used_bytes()));
  Serial.print(" of ");
  Serial.print(static_cast<unsigned long>(tinymoe::Classifier::tensor_arena_size()));
  Serial.println(" bytes.");
}

void loop() {}
