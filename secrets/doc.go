// Package secrets is edgegw's identity domain: the device triple
// (productKey, deviceName, deviceSecret), product secrets, the Secret type
// that never prints, signing and verification of MQTT CONNECT credentials for
// both cloud dialects (Alibaba Cloud IoT Platform and EnOS IoT Hub), and the
// encrypted device registry kept in bbolt.
//
// Signing and verification are pure functions checked against golden
// vectors in testdata/. The registry encrypts every secret at rest with
// AES-256-GCM under a key read from a file.
package secrets
