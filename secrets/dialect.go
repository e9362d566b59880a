package secrets

import "fmt"

// Dialect names a cloud IoT platform's MQTT authentication dialect.
type Dialect string

const (
	// Aliyun is Alibaba Cloud IoT Platform: HMAC signatures keyed with the secret.
	Aliyun Dialect = "aliyun"
	// EnOS is Envision EnOS IoT Hub: a plain digest over content+secret.
	EnOS Dialect = "enos"
)

// ParseDialect accepts "aliyun" (also "alibaba") and "enos".
func ParseDialect(s string) (Dialect, error) {
	switch s {
	case "aliyun", "alibaba":
		return Aliyun, nil
	case "enos":
		return EnOS, nil
	}
	return "", fmt.Errorf("unknown dialect %q (want aliyun or enos)", s)
}

// String returns the dialect's name.
func (d Dialect) String() string { return string(d) }
