package secrets

import "fmt"

// DeviceID names a device by its cloud identity: the productKey and the
// deviceName (the EnOS deviceKey). It is the one identity type of edgegw:
// the registry, the local broker, the spool, the uplink sessions and the
// admin API all key devices by it. Neither part may contain '/' (Validate
// enforces that for anything stored), so String and ParseDeviceID are
// inverses.
type DeviceID struct {
	ProductKey string `json:"productKey"`
	DeviceName string `json:"deviceName"` // the EnOS deviceKey for EnOS products
}

// String returns "productKey/deviceName", the form registry keys, maps and
// logs use.
func (d DeviceID) String() string { return d.ProductKey + "/" + d.DeviceName }

// IsZero reports whether d names no device.
func (d DeviceID) IsZero() bool { return d.ProductKey == "" && d.DeviceName == "" }

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
