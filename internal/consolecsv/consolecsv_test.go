package consolecsv_test

import (
	"bytes"
	"encoding/csv"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"

	"github.com/edgegw/edgegw/internal/consolecsv"
)

// readAll reads every row and every problem of in, the way a lenient
// caller (edgegw ctl import) does.
func readAll(t testing.TB, in string, cols []string) (rows []consolecsv.Row, problems []*consolecsv.Error, err error) {
	t.Helper()
	rd, err := consolecsv.NewReader(strings.NewReader(in), "in.csv", cols)
	if err != nil {
		return nil, nil, err
	}
	for range 10000 {
		row, err := rd.Read()
		if errors.Is(err, io.EOF) {
			return rows, problems, nil
		}
		var ce *consolecsv.Error
		if !errors.As(err, &ce) {
			if err != nil {
				t.Fatalf("Read: %v is not a *consolecsv.Error", err)
			}
			rows = append(rows, row)
			continue
		}
		problems = append(problems, ce)
	}
	t.Fatal("Read never reached the end")
	return
}

func show(rows []consolecsv.Row) string {
	var b strings.Builder
	for _, r := range rows {
		fmt.Fprintf(&b, "%d:%s ", r.Line, strings.Join(r.Fields, "|"))
	}
	return strings.TrimSpace(b.String())
}

func TestReaderAccepts(t *testing.T) {
	for _, tc := range []struct {
		name, in string
		cols     []string
		want     string
	}{
		{"plain", "ProductKey,DeviceName,DeviceSecret\npk,dn,s\n", consolecsv.DeviceColumns, "2:pk|dn|s"},
		{"BOM and CRLF", "\uFEFFProductKey,DeviceName,DeviceSecret\r\npk,dn,s\r\npk,dn2,\r\n", consolecsv.DeviceColumns, "2:pk|dn|s 3:pk|dn2|"},
		{"reordered, any case, spaces, extra column", "devicesecret, Remark ,PRODUCTKEY , DeviceName\nxyz,hello,pk,dn\n", consolecsv.DeviceColumns, "2:pk|dn|xyz"},
		{"blank lines and blank rows", "ProductKey,DeviceName,DeviceSecret\n\npk,dn,s\n , ,\n", consolecsv.DeviceColumns, "3:pk|dn|s"},
		{"values as written", "ProductKey,DeviceName,DeviceSecret\n pk ,dn ,s\n", consolecsv.DeviceColumns, "2: pk |dn |s"},
		{"quoted, multi-line", "ProductKey,DeviceName,DeviceSecret\n\"p,k\",\"d\nn\",\"a\"\"b\"\npk,dn,s\n", consolecsv.DeviceColumns, "2:p,k|d\nn|a\"b 4:pk|dn|s"},
		{"header only", "ProductKey,DeviceName,DeviceSecret\n", consolecsv.DeviceColumns, ""},
		{"no final newline", "ProductKey,ProductSecret\npk,ps", consolecsv.ProductColumns, "2:pk|ps"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rows, problems, err := readAll(t, tc.in, tc.cols)
			if err != nil || len(problems) != 0 {
				t.Fatalf("err %v, problems %v", err, problems)
			}
			if got := show(rows); got != tc.want {
				t.Errorf("rows %q, want %q", got, tc.want)
			}
		})
	}
}

func TestReaderHeaderErrors(t *testing.T) {
	for in, want := range map[string]string{
		"":                        "in.csv:1: missing header (want ProductKey,DeviceName,DeviceSecret)",
		"pk,dn,s\n":               "in.csv:1: header lacks column ProductKey (want ProductKey,DeviceName,DeviceSecret)",
		"ProductKey,DeviceName\n": "in.csv:1: header lacks column DeviceSecret",
		"ProductKey,DeviceName,DeviceSecret,productkey\n": "in.csv:1: header names column \"productkey\" twice",
		"ProductKey,\"DeviceName\n":                       "in.csv:1: header: extraneous or missing \" in quoted-field",
	} {
		_, err := consolecsv.NewReader(strings.NewReader(in), "in.csv", consolecsv.DeviceColumns)
		var ce *consolecsv.Error
		if !errors.As(err, &ce) || !strings.HasPrefix(err.Error(), want) {
			t.Errorf("%q: error %v, want %q", in, err, want)
		}
	}
}

// Bad lines are reported with their line and reading goes on.
func TestReaderBadLinesThenContinues(t *testing.T) {
	in := "ProductKey,DeviceName,DeviceSecret\n" +
		"pk,dn1,s\n" + // 2
		"pk,dn2\n" + // 3: too few fields
		"pk,dn3,top \"secret\"\n" + // 4: bare quote
		"pk,dn5,s\n" // 5
	rows, problems, err := readAll(t, in, consolecsv.DeviceColumns)
	if err != nil {
		t.Fatal(err)
	}
	if got := show(rows); got != "2:pk|dn1|s 5:pk|dn5|s" {
		t.Errorf("rows %q", got)
	}
	if len(problems) != 2 {
		t.Fatalf("problems %v", problems)
	}
	if p := problems[0]; p.Line != 3 || p.Detail() != "wrong number of fields (the header has a different count)" {
		t.Errorf("problem 0: %v", p)
	}
	if p := problems[1]; p.Line != 4 || !errors.Is(p, csv.ErrBareQuote) || !strings.HasPrefix(p.Error(), "in.csv:4: ") {
		t.Errorf("problem 1: %v", p)
	}
	for _, p := range problems {
		if strings.Contains(p.Error(), "secret") {
			t.Errorf("problem quotes the input: %v", p)
		}
	}
}

func TestParseStopsAtFirstProblem(t *testing.T) {
	in := "ProductKey,ProductSecret\npk1,a\npk2,bad secret\npk3,c\n"
	var seen []string
	err := consolecsv.Parse(strings.NewReader(in), "p.csv", consolecsv.ProductColumns, func(r consolecsv.Row) error {
		seen = append(seen, r.Fields[0])
		return consolecsv.CheckSecret(consolecsv.ProductSecret, r.Fields[1])
	})
	var ce *consolecsv.Error
	if !errors.As(err, &ce) || ce.Line != 3 || ce.Column != consolecsv.ProductSecret ||
		err.Error() != "p.csv:3: ProductSecret: byte 4 is whitespace, a control character or not ASCII" {
		t.Fatalf("error %v (%+v)", err, ce)
	}
	if strings.Join(seen, " ") != "pk1 pk2" {
		t.Errorf("rows seen %v", seen)
	}
	err = consolecsv.Parse(strings.NewReader("ProductKey,ProductSecret\npk1\n"), "p.csv", consolecsv.ProductColumns, func(consolecsv.Row) error { return nil })
	if err == nil || !strings.HasPrefix(err.Error(), "p.csv:2: wrong number of fields") {
		t.Errorf("short line: %v", err)
	}
}

func TestCheckSecret(t *testing.T) {
	for v, want := range map[string]string{
		"":                       "DeviceSecret is empty",
		strings.Repeat("x", 513): "DeviceSecret is 513 bytes, at most 512 allowed",
		"ab\x00":                 "DeviceSecret: byte 3 is whitespace, a control character or not ASCII",
		"é":                      "DeviceSecret: byte 1 is whitespace",
	} {
		if err := consolecsv.CheckSecret(consolecsv.DeviceSecret, v); err == nil || !strings.HasPrefix(err.Error(), want) {
			t.Errorf("%q: %v, want %q", v, err, want)
		}
	}
	if err := consolecsv.CheckSecret(consolecsv.DeviceSecret, strings.Repeat("x", 512)); err != nil {
		t.Errorf("512 bytes: %v", err)
	}
}

// FuzzParse: the reader never panics or loops, every problem names the
// input and a line, every row has the asked-for columns on increasing
// lines, and what it reads survives a round trip through encoding/csv.
func FuzzParse(f *testing.F) {
	for _, s := range []string{
		"ProductKey,DeviceName,DeviceSecret\na1B2c3D4e5F,pump0001,s3cret\n",
		"\uFEFFProductKey,DeviceName,DeviceSecret\r\na1B2c3D4e5F,pump0001,\r\n",
		"devicesecret,x,productkey,devicename\n\"a\"\"b\",,pk1,dn01\n",
		"ProductKey,DeviceName,DeviceSecret\n,,\n\n",
		"ProductKey,DeviceName,DeviceSecret\na1B2c3D4e5F,\"pump\n0001\",s\n",
		"ProductKey,DeviceName,DeviceSecret\npk,dn\npk,\"dn,s\n",
		"ProductKey,ProductSecret\npk,ps\n",
		"",
	} {
		f.Add([]byte(s), false)
		f.Add([]byte(s), true)
	}
	f.Fuzz(func(t *testing.T, data []byte, products bool) {
		cols := consolecsv.DeviceColumns
		if products {
			cols = consolecsv.ProductColumns
		}
		rows, problems, err := readAll(t, string(data), cols)
		if err != nil {
			if !strings.HasPrefix(err.Error(), "in.csv:") {
				t.Fatalf("header error does not name the input: %v", err)
			}
			return
		}
		for _, p := range problems {
			if p.Name != "in.csv" || p.Line < 1 || !strings.HasPrefix(p.Error(), fmt.Sprintf("in.csv:%d: ", p.Line)) {
				t.Fatalf("problem %+v does not name the input and a line", p)
			}
		}
		last := 0
		for _, r := range rows {
			if len(r.Fields) != len(cols) || r.Line <= last {
				t.Fatalf("row %+v after line %d", r, last)
			}
			last = r.Line
		}
		var b bytes.Buffer
		w := csv.NewWriter(&b)
		w.Write(cols)
		for _, r := range rows {
			w.Write(r.Fields)
		}
		w.Flush()
		again, problems, err := readAll(t, b.String(), cols)
		if err != nil || len(problems) != 0 {
			t.Fatalf("round trip: %v %v", err, problems)
		}
		if len(again) != len(rows) {
			t.Fatalf("round trip: %d rows, want %d", len(again), len(rows))
		}
		for i := range rows {
			if strings.Join(again[i].Fields, "\x00") != strings.Join(rows[i].Fields, "\x00") {
				t.Fatalf("round trip changed row %d: %q -> %q", i, rows[i].Fields, again[i].Fields)
			}
		}
	})
}
