package ingest

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"math"
	"strconv"
	"strings"
	"testing"

	"github.com/gradeline/gradeline/bus"
)

func TestFloat32ToHalf(t *testing.T) {
	for _, tc := range []struct {
		in   float32
		want uint16
		ok   bool
	}{
		{0, 0x0000, true},
		{float32(math.Copysign(0, -1)), 0x8000, true},
		{1, 0x3c00, true},
		{-2, 0xc000, true},
		{0.1, 0x2e66, true},
		{1.0 / 3, 0x3555, true},
		{65504, 0x7bff, true},                // the largest half
		{65519, 0x7bff, true},                // rounds down to it
		{65520, 0, false},                    // rounds up to infinity
		{1e10, 0, false},                     // far beyond
		{5.960464477539063e-8, 0x0001, true}, // 2^-24, the smallest subnormal
		{6.097555160522461e-5, 0x03ff, true}, // the largest subnormal
		{6.103515625e-05, 0x0400, true},      // the smallest normal
		{1e-9, 0x0000, true},                 // underflows to zero
		{1.0009765625, 0x3c01, true},         // 1 + 2^-10, exact
		{1.00048828125, 0x3c00, true},        // halfway: to even (down)
		{1.00146484375, 0x3c02, true},        // halfway: to even (up)
	} {
		got, ok := float32ToHalf(tc.in)
		if ok != tc.ok || (ok && got != tc.want) {
			t.Errorf("float32ToHalf(%v) = %#04x, %v; want %#04x, %v", tc.in, got, ok, tc.want, tc.ok)
		}
	}
}

func TestParseJSONData(t *testing.T) {
	for _, tc := range []struct {
		name, datatype, data string
		shape                []int64
		want                 []byte // raw little-endian, when accepted
		err                  string // substring of the error, when refused
	}{
		{"flat", "UINT8", "[1, 2, 3, 4]", []int64{2, 2}, []byte{1, 2, 3, 4}, ""},
		{"nested", "UINT8", "[[1, 2], [3, 4]]", []int64{2, 2}, []byte{1, 2, 3, 4}, ""},
		{"nested rank 3", "INT8", "[[[-1], [2]]]", []int64{1, 2, 1}, []byte{0xff, 2}, ""},
		{"bool", "BOOL", "[true, false]", []int64{2}, []byte{1, 0}, ""},
		{"int16", "INT16", "[-2]", []int64{1}, []byte{0xfe, 0xff}, ""},
		{"uint32", "UINT32", "[4294967295]", []int64{1}, []byte{0xff, 0xff, 0xff, 0xff}, ""},
		{"fp16", "FP16", "[1, -2]", []int64{2}, []byte{0x00, 0x3c, 0x00, 0xc0}, ""},
		{"empty tensor", "FP32", "[]", []int64{0, 3}, []byte{}, ""},
		{"too few", "UINT8", "[1, 2, 3]", []int64{2, 2}, nil, "holds 3 elements; shape [2 2] needs 4"},
		{"too many", "UINT8", "[1, 2, 3, 4, 5]", []int64{2, 2}, nil, "more elements than shape"},
		{"ragged", "UINT8", "[[1, 2, 3], [4]]", []int64{2, 2}, nil, "3 elements at depth 2"},
		{"wrong outer length", "UINT8", "[[1, 2], [3, 4], [5, 6]]", []int64{2, 2}, nil, "more elements than shape"},
		{"half nested", "UINT8", "[[1, 2, 3, 4]]", []int64{1, 2, 2}, nil, "nested 2 deep"},
		{"too deep", "UINT8", "[[[1]]]", []int64{1, 1}, nil, "nested deeper than shape"},
		{"mixed depths", "UINT8", "[1, [2]]", []int64{2}, nil, "nested deeper"},
		{"mixed depths rank 2", "UINT8", "[[1, 2], 3, 4]", []int64{2, 2}, nil, "mixes elements"},
		{"not an array", "UINT8", "7", []int64{1}, nil, "must be a JSON array"},
		{"object element", "UINT8", "[{}]", []int64{1}, nil, "not objects"},
		{"uint8 range", "UINT8", "[256]", []int64{1}, nil, "256 is out of the UINT8 range"},
		{"int8 range", "INT8", "[-129]", []int64{1}, nil, "out of the INT8 range"},
		{"negative uint", "UINT16", "[-1]", []int64{1}, nil, "not a valid UINT16"},
		{"fraction for int", "INT32", "[1.5]", []int64{1}, nil, "1.5 is not a valid INT32"},
		{"int64 range", "INT64", "[9223372036854775808]", []int64{1}, nil, "out of the INT64 range"},
		{"fp32 range", "FP32", "[1e39]", []int64{1}, nil, "out of the FP32 range"},
		{"fp16 range", "FP16", "[70000]", []int64{1}, nil, "out of the FP16 range"},
		{"string for number", "FP32", `["1"]`, []int64{1}, nil, "want a number"},
		{"number for bool", "BOOL", "[1]", []int64{1}, nil, "want true or false"},
		{"number for bytes", "BYTES", "[1]", []int64{1}, nil, "want a string"},
		{"trailing content", "UINT8", "[1] [2]", []int64{1}, nil, "after the array"},
		{"broken JSON", "UINT8", "[1,", []int64{2}, nil, "data:"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tt := &oipTensor{Name: "x", Datatype: tc.datatype, Shape: tc.shape}
			count, err := elementCount("x", tc.shape, 1<<20)
			if err != nil {
				t.Fatal(err)
			}
			err = parseJSONData(tt, json.RawMessage(tc.data), count)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("error %v, want one containing %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if string(tt.raw) != string(tc.want) {
				t.Fatalf("raw % x, want % x", tt.raw, tc.want)
			}
		})
	}
}

func TestTakeBinaryBytes(t *testing.T) {
	elem := func(s string) []byte {
		return append(binary.LittleEndian.AppendUint32(nil, uint32(len(s))), s...)
	}
	two := append(elem("ab"), elem("")...)
	for _, tc := range []struct {
		name  string
		data  []byte
		count int64
		err   string
	}{
		{"two elements", two, 2, ""},
		{"fewer than the shape", two, 3, "holds 2 BYTES elements; shape [3] needs 3"},
		{"more than the shape", two, 1, "more BYTES elements"},
		{"truncated length", append(elem("ab"), 1, 0), 2, "truncated length"},
		{"length beyond the data", elem("abc")[:6], 1, "exceeds the 2 bytes left"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tt := &oipTensor{Name: "x", Datatype: "BYTES", Shape: []int64{tc.count}}
			err := takeBinary(tt, tc.data, tc.count)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("error %v, want one containing %q", err, tc.err)
				}
				return
			}
			if err != nil || len(tt.elems) != 2 || string(tt.elems[0]) != "ab" || len(tt.elems[1]) != 0 {
				t.Fatalf("elems %q, err %v", tt.elems, err)
			}
		})
	}
}

func TestClassify(t *testing.T) {
	got := classify([]float32{0.1, 0.5, 0.5, 0.2, 0.9, 0.05}, []string{"a", "b", "c"}, 2)
	want := []string{"0.5:1:b", "0.5:2:c", "0.9:1:b", "0.2:0:a"}
	if len(got) != len(want) {
		t.Fatalf("%q", got)
	}
	for i := range want {
		if string(got[i]) != want[i] {
			t.Fatalf("element %d: %q, want %q (all: %q)", i, got[i], want[i], got)
		}
	}
}

// FuzzParseInferRequest: whatever the body and header length, parsing
// answers a request or a 400, never a panic or another status, and never
// holds more elements than the body carries.
func FuzzParseInferRequest(f *testing.F) {
	info := bus.ModelInfo{Name: "m", Input: bus.ModelInput{Name: "pixels", Layout: "NCHW", Width: 2, Height: 2, Channels: 1}, Labels: []string{"a", "b"}, MaxBatch: 4}
	head := `{"inputs":[{"name":"pixels","shape":[1,1,2,2],"datatype":"FP32","parameters":{"binary_data_size":16}}]}`
	f.Add([]byte(`{"id":"1","inputs":[{"name":"pixels","shape":[1,1,2,2],"datatype":"FP32","data":[[[[1,2],[3,4]]]]}]}`), "")
	f.Add(append([]byte(head), make([]byte, 16)...), strconv.Itoa(len(head)))
	f.Add([]byte(`{"inputs":[{"name":"pixels","shape":[2],"datatype":"BYTES","parameters":{"binary_data_size":9}}]}`+"\x01\x00\x00\x00a\x00\x00\x00\x00"), "87")
	f.Add([]byte(`{"inputs":[{"name":"x","shape":[3],"datatype":"FP16","data":[1,2,3]}]}`), "")
	f.Add(make([]byte, 32), "0")
	f.Add([]byte(`{"inputs":[{"name":"x","shape":[1099511627776,1099511627776],"datatype":"BOOL","data":[true]}]}`), "")
	f.Fuzz(func(t *testing.T, body []byte, hlen string) {
		req, err := parseInferRequest(body, hlen, info, 1<<20)
		if err != nil {
			var ae *apiError
			if !errors.As(err, &ae) || ae.Status != 400 || ae.Message == "" {
				t.Fatalf("error %v (%T), want a 400", err, err)
			}
			return
		}
		for _, in := range req.Inputs {
			// An element takes at least a byte of the body and at most 8 in raw.
			if len(in.raw) > 8*len(body) || len(in.elems) > len(body) {
				t.Fatalf("input %s holds more than the body", in.Name)
			}
		}
		if _, err := resolveOutputs(req, info); err != nil {
			var ae *apiError
			if !errors.As(err, &ae) || ae.Status != 400 {
				t.Fatalf("outputs: %v", err)
			}
		}
	})
}
