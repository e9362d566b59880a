package spool

import (
	"fmt"
	"time"
)

// DeviceID names a device by its cloud identity.
type DeviceID struct {
	ProductKey string
	DeviceName string
}

// String returns "productKey/deviceName" (neither part may contain '/').
func (d DeviceID) String() string { return d.ProductKey + "/" + d.DeviceName }

// ParseDeviceID is the inverse of DeviceID.String.
func ParseDeviceID(s string) (DeviceID, error) {
	for i := 0; i < len(s); i++ {
		if s[i] == '/' {
			if i == 0 || i == len(s)-1 {
				break
			}
			return DeviceID{ProductKey: s[:i], DeviceName: s[i+1:]}, nil
		}
	}
	return DeviceID{}, fmt.Errorf("device id %q: want productKey/deviceName", s)
}

// Message is one device publish waiting to be forwarded to the cloud.
type Message struct {
	// Seq is assigned by the queue on Append: per device, strictly
	// increasing in publish order, never reused (also across restarts).
	Seq      uint64
	Topic    string
	Payload  []byte
	QoS      byte
	Received time.Time // when the local broker accepted it
}
