// Where a board's camera plugs in. NOT BUILT OR RUN BY TINYMOE'S TESTS: there is no camera,
// and no core for a camera board, where they run. Written for the Arduino Nano 33 BLE Sense
// with the TinyML kit's OV7675 camera (the Arduino_OV767X library, installed from the Library
// Manager); for another camera, replace the three marked lines with its driver's calls.
//
// The frame can have any size: the library resizes it on the device as tinymoe resized the
// training photos. Check your driver's RGB565 byte order: kRGB565 reads each pixel as a
// little-endian word, kRGB565BigEndian high byte first (wrong colours mean the other one).
#include <Arduino_OV767X.h>  // camera driver (1/3)
#include <{{header}}>

constexpr int kWidth = 176;  // QCIF
constexpr int kHeight = 144;
uint8_t frame[kWidth * kHeight * 2];  // RGB565: 2 bytes a pixel

tinymoe::Classifier classifier;

void setup() {
  Serial.begin(115200);
  while (!Serial) {
  }
  if (!Camera.begin(QCIF, RGB565, 1, OV7675)) {  // camera driver (2/3)
    Serial.println("Failed to start the camera.");
    while (true) {
    }
  }
  if (!classifier.begin()) {
    Serial.println(classifier.error());
    while (true) {
    }
  }
}

void loop() {
  Camera.readFrame(frame);  // camera driver (3/3)
  tinymoe::Result result =
      classifier.classify(frame, kWidth, kHeight, tinymoe::PixelFormat::kRGB565BigEndian);
  if (!result.ok) {
    Serial.println(classifier.error());
    return;
  }
  for (int i = 0; i < result.count; ++i) {
    Serial.print(result.top[i].label);
    Serial.print(" (");
    Serial.print(result.top[i].score, 2);
    Serial.print(i + 1 < result.count ? ")  " : ")\n");
  }
}
