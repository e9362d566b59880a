package secrets

import (
	"crypto/hmac"
	"crypto/md5"
	"crypto/sha1"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"sort"
	"strconv"
	"strings"
)

// SignMethod names a signing algorithm as it appears in the clientId's
// signmethod parameter.
type SignMethod string

// Sign methods. Alibaba accepts the hmac* names and computes a keyed HMAC.
// EnOS computes a plain digest of content+secret; its hmac* names are
// aliases of the plain digests (see docs/protocol.md §3.2).
const (
	HMACMD5    SignMethod = "hmacmd5"
	HMACSHA1   SignMethod = "hmacsha1"
	HMACSHA256 SignMethod = "hmacsha256"
	MD5        SignMethod = "md5"
	SHA1       SignMethod = "sha1"
	SHA256     SignMethod = "sha256"
)

// MaxClientIDLen is the longest bare clientId both clouds accept.
const MaxClientIDLen = 64

// DefaultSignMethod returns the sign method edgegw uses when none is given:
// hmacsha256 for Alibaba (what every current SDK sends), sha256 for EnOS.
func DefaultSignMethod(d Dialect) SignMethod {
	if d == EnOS {
		return SHA256
	}
	return HMACSHA256
}

// hashFor returns the hash constructor for m in dialect d, or nil when the
// dialect does not know m.
func hashFor(d Dialect, m SignMethod) func() hash.Hash {
	switch d {
	case Aliyun:
		switch m {
		case HMACMD5:
			return md5.New
		case HMACSHA1:
			return sha1.New
		case HMACSHA256:
			return sha256.New
		}
	case EnOS:
		switch m {
		case MD5, HMACMD5:
			return md5.New
		case SHA1, HMACSHA1:
			return sha1.New
		case SHA256, HMACSHA256:
			return sha256.New
		}
	}
	return nil
}

// Param is one key=value pair of the clientId's |…| block.
type Param struct{ Key, Value string }

// SignParams are the inputs of Sign.
type SignParams struct {
	Dialect    Dialect
	ProductKey string
	DeviceName string // EnOS: deviceKey
	// ClientID is the bare clientId (the part before '|'); empty means DeviceName.
	ClientID string
	// Timestamp is the decimal ms epoch put into the clientId and the signed
	// content. Empty leaves it out (Alibaba only; EnOS requires it).
	Timestamp string
	// SignMethod defaults to DefaultSignMethod(Dialect).
	SignMethod SignMethod
	// SecureMode defaults to 2.
	SecureMode int
	// Extra parameters appended to the |…| block after securemode,
	// signmethod and timestamp (e.g. _v, lan, ext). They are not signed.
	Extra []Param
}

// Credentials are the three CONNECT fields for one attempt, plus the signed
// content (useful to a person checking a device by hand; it holds no secret).
type Credentials struct {
	ClientID string // the full MQTT clientId, with its |…| block
	Username string
	Password Secret // the signature; it grants a login, so it is treated as a secret
	Content  string
}

// Sign computes the CONNECT credentials of a device. The secret is the
// deviceSecret, or for EnOS securemode 3 the productSecret.
func Sign(p SignParams, secret Secret) (Credentials, error) {
	if p.Dialect != Aliyun && p.Dialect != EnOS {
		return Credentials{}, fmt.Errorf("sign: unknown dialect %q", p.Dialect)
	}
	if p.ProductKey == "" || p.DeviceName == "" {
		return Credentials{}, errors.New("sign: productKey and deviceName are required")
	}
	if secret.IsZero() {
		return Credentials{}, errors.New("sign: the secret is empty")
	}
	if p.ClientID == "" {
		p.ClientID = p.DeviceName
	}
	if err := checkBareClientID(p.ClientID); err != nil {
		return Credentials{}, fmt.Errorf("sign: %w", err)
	}
	if p.SignMethod == "" {
		p.SignMethod = DefaultSignMethod(p.Dialect)
	}
	if p.SecureMode == 0 {
		p.SecureMode = 2
	}
	if p.Dialect == EnOS && p.Timestamp == "" {
		return Credentials{}, errors.New("sign: EnOS requires a timestamp")
	}
	if p.Timestamp != "" {
		if _, err := strconv.ParseUint(p.Timestamp, 10, 64); err != nil {
			return Credentials{}, fmt.Errorf("sign: timestamp %q is not a decimal millisecond epoch", p.Timestamp)
		}
	}
	h := hashFor(p.Dialect, p.SignMethod)
	if h == nil {
		return Credentials{}, fmt.Errorf("sign: sign method %q is not one of %s", p.SignMethod, methodList(p.Dialect))
	}
	block := []Param{{"securemode", strconv.Itoa(p.SecureMode)}, {"signmethod", string(p.SignMethod)}}
	if p.Timestamp != "" {
		block = append(block, Param{"timestamp", p.Timestamp})
	}
	for _, e := range p.Extra {
		if e.Key == "" || strings.ContainsAny(e.Key+e.Value, ",|=") {
			return Credentials{}, fmt.Errorf("sign: extension parameter %q must be key=value without ',', '|' or '='", e.Key)
		}
		block = append(block, e)
	}
	content := Content(p.Dialect, p.ClientID, p.DeviceName, p.ProductKey, p.Timestamp)
	return Credentials{
		ClientID: FormatClientID(p.ClientID, block),
		Username: p.DeviceName + "&" + p.ProductKey,
		Password: NewSecret(digest(p.Dialect, h, content, secret)),
		Content:  content,
	}, nil
}

// Content returns the string both clouds sign: the parameters sorted by
// name, each name followed by its value. Alibaba names the device
// "deviceName", EnOS "deviceKey"; an empty clientId or timestamp is left out.
func Content(d Dialect, clientID, deviceName, productKey, timestamp string) string {
	dnKey := "deviceName"
	if d == EnOS {
		dnKey = "deviceKey"
	}
	kv := map[string]string{dnKey: deviceName, "productKey": productKey}
	if clientID != "" {
		kv["clientId"] = clientID
	}
	if timestamp != "" {
		kv["timestamp"] = timestamp
	}
	return sortedContent(kv)
}

func sortedContent(kv map[string]string) string {
	keys := make([]string, 0, len(kv))
	for k := range kv {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	for _, k := range keys {
		b.WriteString(k)
		b.WriteString(kv[k])
	}
	return b.String()
}

// digest computes the password: Alibaba hex(HMAC(secret, content)) in lower
// case; EnOS hex(H(content+secret)) in upper case, as the EnOS docs print it.
func digest(d Dialect, h func() hash.Hash, content string, secret Secret) string {
	if d == EnOS {
		m := h()
		m.Write([]byte(content))
		m.Write([]byte(secret.Reveal()))
		return strings.ToUpper(hex.EncodeToString(m.Sum(nil)))
	}
	m := hmac.New(h, []byte(secret.Reveal()))
	m.Write([]byte(content))
	return hex.EncodeToString(m.Sum(nil))
}

// RegisterSign computes the Alibaba dynamic-registration signature
// hex(HMAC(productSecret, "deviceName"+dn+"productKey"+pk+"random"+random)),
// used for MQTT (authType=register|regnwl) and HTTPS registration.
func RegisterSign(m SignMethod, productKey, deviceName, random string, productSecret Secret) (string, error) {
	h := hashFor(Aliyun, m)
	if h == nil {
		return "", fmt.Errorf("register sign: sign method %q is not one of %s", m, methodList(Aliyun))
	}
	if productSecret.IsZero() {
		return "", errors.New("register sign: the product secret is empty")
	}
	return digest(Aliyun, h, registerContent(productKey, deviceName, random), productSecret), nil
}

func registerContent(productKey, deviceName, random string) string {
	return "deviceName" + deviceName + "productKey" + productKey + "random" + random
}

// FormatClientID renders bare|k=v,k=v|.
func FormatClientID(bare string, params []Param) string {
	var b strings.Builder
	b.WriteString(bare)
	b.WriteByte('|')
	for i, p := range params {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(p.Key)
		b.WriteByte('=')
		b.WriteString(p.Value)
	}
	b.WriteByte('|')
	return b.String()
}

func methodList(d Dialect) string {
	if d == EnOS {
		return "sha256, sha1, md5 (or their hmac* aliases)"
	}
	return "hmacsha256, hmacsha1, hmacmd5"
}

func checkBareClientID(cid string) error {
	if cid == "" {
		return errors.New("clientId is empty")
	}
	if len(cid) > MaxClientIDLen {
		return fmt.Errorf("clientId is %d characters, more than %d", len(cid), MaxClientIDLen)
	}
	if strings.ContainsAny(cid, "|,") {
		return errors.New("clientId must not contain '|' or ','")
	}
	for _, r := range cid {
		if r < 0x20 || r == 0x7f {
			return errors.New("clientId contains a control character")
		}
	}
	return nil
}
