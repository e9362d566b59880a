package config

import (
	"cmp"
	"errors"
	"fmt"
	"maps"
	"math"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/BurntSushi/toml"
)

// Decoding: the file is parsed by BurntSushi/toml into a generic tree, then
// walked against Config's toml tags, so that every unknown key and every
// type error is found and reported with its key (lines.go then finds each
// reported key's line).
//
// The walk is ours rather than a library's strict mode because the schema
// decides what a value may be: a duration or a file mode must be a string
// (an integer is an error, not nanoseconds), a size an integer or a string,
// and a key of the wrong type is named with its element index
// ("broker.admin[1].user") and TOML's type names, every one in one pass.
// go-toml/v2's strict mode (DisallowUnknownFields) was tried instead: it
// places unknown keys, but without array indexes, stops at the first type
// error, names Go types in its messages, and decodes `backoff_min = 5` as
// 5ns without an error.

func (p *parser) decode(cfg *Config) (errs []*Error) {
	var tree map[string]any
	md, err := safeDecode(p.data, &tree)
	if err != nil {
		var pe toml.ParseError
		if errors.As(err, &pe) {
			return []*Error{{Line: pe.Position.Line, Key: oneLine(pe.LastKey), Msg: "syntax error: " + oneLine(pe.Message)}}
		}
		return []*Error{{Msg: "syntax error: " + oneLine(err.Error())}}
	}
	d := &decoder{
		md:    &md,
		order: make(map[string]int),
		seen:  make(map[string]int),
		locs:  make(map[string]locator),
	}
	for i, k := range md.Keys() {
		if _, ok := d.order[k.String()]; !ok {
			d.order[k.String()] = i
		}
	}
	d.table(tree, reflect.ValueOf(cfg).Elem(), nil, "")
	p.locs = d.locs
	return d.errs
}

// valueDecoder is implemented by the value types that decode a TOML value
// themselves.
type valueDecoder interface{ decodeTOML(v any) error }

type decoder struct {
	md    *toml.MetaData
	order map[string]int // key → index of its first appearance in the file
	seen  map[string]int // key → occurrences visited so far
	locs  map[string]locator
	errs  []*Error
}

func (d *decoder) fail(key, format string, args ...any) {
	d.errs = append(d.errs, &Error{Key: key, Msg: fmt.Sprintf(format, args...)})
}

func (d *decoder) typeError(key, want string, v any) {
	d.fail(key, "expected %s, found %s", want, tomlTypeName(v))
}

// visit records where key (its path, display form) is.
func (d *decoder) visit(path toml.Key, key string) {
	s := path.String()
	d.locs[key] = locator{path: path, occ: d.seen[s]}
	d.seen[s]++
}

// table decodes a TOML table into the struct rv; path and key name the
// table (nil and "" for the document).
func (d *decoder) table(m map[string]any, rv reflect.Value, path toml.Key, key string) {
	fields := structFields(rv.Type())
	names := slices.Collect(maps.Keys(m))
	slices.SortFunc(names, func(a, b string) int {
		ia, ib := d.firstIndex(path, a), d.firstIndex(path, b)
		if c := cmp.Compare(ia, ib); c != 0 {
			return c
		}
		return strings.Compare(a, b)
	})
	for _, name := range names {
		sub := append(path[:len(path):len(path)], name)
		subKey := joinKey(key, name)
		d.visit(sub, subKey)
		idx, ok := fields[name]
		if !ok {
			d.fail(subKey, "unknown key%s", unknownKeyHint(name, fields))
			continue
		}
		d.value(m[name], rv.Field(idx), sub, subKey)
	}
}

func (d *decoder) firstIndex(path toml.Key, name string) int {
	if i, ok := d.order[append(path[:len(path):len(path)], name).String()]; ok {
		return i
	}
	return math.MaxInt
}

// value decodes one TOML value into fv.
func (d *decoder) value(v any, fv reflect.Value, path toml.Key, key string) {
	if dec, ok := fv.Addr().Interface().(valueDecoder); ok {
		if err := dec.decodeTOML(v); err != nil {
			d.fail(key, "%s", err)
		}
		return
	}
	switch fv.Kind() {
	case reflect.String:
		s, ok := v.(string)
		if !ok {
			d.typeError(key, "a string", v)
			return
		}
		fv.SetString(s)
	case reflect.Bool:
		b, ok := v.(bool)
		if !ok {
			d.typeError(key, "true or false", v)
			return
		}
		fv.SetBool(b)
	case reflect.Int, reflect.Int64:
		n, ok := v.(int64)
		if !ok {
			d.typeError(key, "an integer", v)
			return
		}
		if fv.OverflowInt(n) {
			d.fail(key, "%d is out of range", n)
			return
		}
		fv.SetInt(n)
	case reflect.Float64:
		switch x := v.(type) {
		case int64:
			fv.SetFloat(float64(x))
		case float64:
			fv.SetFloat(x)
		default:
			d.typeError(key, "a number", v)
		}
	case reflect.Pointer:
		nv := reflect.New(fv.Type().Elem())
		before := len(d.errs)
		d.value(v, nv.Elem(), path, key)
		if len(d.errs) == before {
			fv.Set(nv)
		}
	case reflect.Struct:
		m, ok := v.(map[string]any)
		if !ok {
			d.typeError(key, "a table", v)
			return
		}
		d.table(m, fv, path, key)
	case reflect.Slice:
		if fv.Type().Elem().Kind() == reflect.Struct {
			d.tables(v, fv, path, key)
		} else {
			d.array(v, fv, path, key)
		}
	default:
		// Only reachable if a field of an unsupported kind is added to
		// Config; TestConfigFieldKinds guards against that.
		d.fail(key, "cannot decode into %s", fv.Type())
	}
}

// array decodes an array of values (strings).
func (d *decoder) array(v any, fv reflect.Value, path toml.Key, key string) {
	arr, ok := v.([]any)
	if !ok {
		d.typeError(key, "an array", v)
		return
	}
	// An explicit empty array stays non-nil: it replaces a non-empty
	// default, and an encoder writes it back as [] rather than leaving the
	// key out.
	sl := reflect.MakeSlice(fv.Type(), len(arr), len(arr))
	before := len(d.errs)
	for i, e := range arr {
		d.value(e, sl.Index(i), path, fmt.Sprintf("%s[%d]", key, i))
	}
	if len(d.errs) == before {
		fv.Set(sl)
	}
}

// tables decodes an array of tables ([[x]] or x = [{...}, ...]).
func (d *decoder) tables(v any, fv reflect.Value, path toml.Key, key string) {
	var elems []map[string]any
	switch x := v.(type) {
	case []map[string]any:
		elems = x
	case []any:
		for i, e := range x {
			m, ok := e.(map[string]any)
			if !ok {
				d.typeError(fmt.Sprintf("%s[%d]", key, i), "a table", e)
				return
			}
			elems = append(elems, m)
		}
	default:
		d.typeError(key, "an array of tables", v)
		return
	}
	if len(elems) == 0 {
		fv.Set(reflect.Zero(fv.Type()))
		return
	}
	// [[x]] headers repeat the key once per element; x = [...] holds it once.
	headers := d.md.Type(path...) == "ArrayHash"
	sl := reflect.MakeSlice(fv.Type(), len(elems), len(elems))
	for i, m := range elems {
		elemKey := fmt.Sprintf("%s[%d]", key, i)
		loc := locator{path: path}
		if headers {
			loc.occ = i
		}
		d.locs[elemKey] = loc
		d.table(m, sl.Index(i), path, elemKey)
	}
	fv.Set(sl)
}

// structFields maps toml tag names to field indexes.
func structFields(t reflect.Type) map[string]int {
	fields := make(map[string]int, t.NumField())
	for i := range t.NumField() {
		f := t.Field(i)
		name, _, _ := strings.Cut(f.Tag.Get("toml"), ",")
		if name == "" || name == "-" || !f.IsExported() {
			continue
		}
		fields[name] = i
	}
	return fields
}

// unknownKeyHint suggests a known key close to an unknown one, and points
// misplaced secrets to their file-based keys.
func unknownKeyHint(name string, fields map[string]int) string {
	lower := strings.ToLower(name)
	for _, secret := range []string{"password", "secret", "private_key", "token"} {
		if strings.Contains(lower, secret) && !strings.HasSuffix(lower, "_file") {
			hint := "; secrets do not belong in the configuration"
			if _, ok := fields["password_file"]; ok {
				hint += ": put the password in a file and name it with password_file"
			}
			return hint
		}
	}
	best, bestDist := "", 3
	for known := range fields {
		dist := editDistance(lower, known)
		if dist < bestDist || (dist == bestDist && known < best) {
			best, bestDist = known, dist
		}
	}
	if best == "" {
		return ""
	}
	return fmt.Sprintf(" (did you mean %q?)", best)
}

// editDistance is the Levenshtein distance of two short strings.
func editDistance(a, b string) int {
	if len(a) > 64 || len(b) > 64 {
		return math.MaxInt
	}
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

// joinKey appends a key part to a display key, quoting it unless bare.
func joinKey(parent, name string) string {
	part := name
	if !isBareKey(name) {
		part = strconv.Quote(name)
	}
	if parent == "" {
		return part
	}
	return parent + "." + part
}

func isBareKey(s string) bool {
	if s == "" {
		return false
	}
	for _, r := range s {
		if !(r >= 'A' && r <= 'Z' || r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '_' || r == '-') {
			return false
		}
	}
	return true
}

// tomlTypeName names the TOML type of a decoded value for messages.
func tomlTypeName(v any) string {
	switch v.(type) {
	case string:
		return "a string"
	case int64:
		return "an integer"
	case float64:
		return "a float"
	case bool:
		return "a boolean"
	case time.Time:
		return "a date-time"
	case []map[string]any:
		return "an array of tables"
	case []any:
		return "an array"
	case map[string]any:
		return "a table"
	}
	return fmt.Sprintf("a %T", v)
}

// safeDecode parses data; the parser's internal panics become errors.
func safeDecode(data string, v any) (md toml.MetaData, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("TOML parser failed: %v", r)
		}
	}()
	return toml.Decode(data, v)
}
