package ingest_test

// A client of the Open Inference Protocol v2, written from the published
// specification (KServe's required_api, Triton's binary_tensor_data and
// classification extensions), against a real edge, JetStream, ONNX
// Runtime and the repository's models; its answers are checked against the
// grade route for the same images.

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/gradeline/gradeline/bus"
	"github.com/gradeline/gradeline/inference"
	"github.com/gradeline/gradeline/ingest"
)

// specInput is a request input as the specification writes it; bin, when
// set, travels in the binary section (binary_data_size) instead of data.
type specInput struct {
	Name       string         `json:"name"`
	Shape      []int64        `json:"shape"`
	Datatype   string         `json:"datatype"`
	Parameters map[string]any `json:"parameters,omitempty"`
	Data       any            `json:"data,omitempty"`
	bin        []byte
}

type specOutputReq struct {
	Name       string         `json:"name"`
	Parameters map[string]any `json:"parameters,omitempty"`
}

type specRequest struct {
	ID         string          `json:"id,omitempty"`
	Parameters map[string]any  `json:"parameters,omitempty"`
	Inputs     []specInput     `json:"inputs"`
	Outputs    []specOutputReq `json:"outputs,omitempty"`
}

type specOutput struct {
	Name       string         `json:"name"`
	Datatype   string         `json:"datatype"`
	Shape      []int64        `json:"shape"`
	Parameters map[string]any `json:"parameters"`
	Data       []any          `json:"data"`
	bin        []byte
}

type specResponse struct {
	ModelName    string         `json:"model_name"`
	ModelVersion string         `json:"model_version"`
	ID           *string        `json:"id"`
	Parameters   map[string]any `json:"parameters"`
	Outputs      []specOutput   `json:"outputs"`
	Error        string         `json:"error"`
}

// encode writes the body: JSON alone, or the JSON header followed by the
// inputs' binary data, and the header length to send (or "").
func (r specRequest) encode(t testing.TB) ([]byte, string) {
	t.Helper()
	var tail []byte
	for i := range r.Inputs {
		in := &r.Inputs[i]
		if in.bin != nil {
			if in.Parameters == nil {
				in.Parameters = map[string]any{}
			}
			in.Parameters["binary_data_size"] = len(in.bin)
			tail = append(tail, in.bin...)
		}
	}
	head, err := json.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	if tail == nil {
		return head, ""
	}
	return append(head, tail...), strconv.Itoa(len(head))
}

// specInfer sends an inference request and decodes the answer, splitting
// off the binary outputs as the extension says.
func (c *client) specInfer(path string, req specRequest) (int, specResponse) {
	c.t.Helper()
	body, hlen := req.encode(c.t)
	h := map[string]string{"Content-Type": "application/json"}
	if hlen != "" {
		h["Content-Type"] = "application/octet-stream"
		h["Inference-Header-Content-Length"] = hlen
	}
	return decodeSpecResponse(c.t, c.do("POST", path, bytes.NewReader(body), h))
}

func decodeSpecResponse(t testing.TB, r response) (int, specResponse) {
	t.Helper()
	head, tail := r.Body, []byte(nil)
	if v := r.Header.Get("Inference-Header-Content-Length"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n > len(r.Body) {
			t.Fatalf("Inference-Header-Content-Length %q with a body of %d bytes", v, len(r.Body))
		}
		head, tail = r.Body[:n], r.Body[n:]
	}
	var res specResponse
	if err := json.Unmarshal(head, &res); err != nil {
		t.Fatalf("status %d: not JSON: %v: %s", r.Status, err, truncate(r.Body))
	}
	for i := range res.Outputs {
		o := &res.Outputs[i]
		size, ok := o.Parameters["binary_data_size"].(float64)
		if !ok {
			continue
		}
		if int(size) > len(tail) {
			t.Fatalf("output %s: binary_data_size %v, %d bytes left", o.Name, size, len(tail))
		}
		o.bin, tail = tail[:int(size)], tail[int(size):]
	}
	if len(tail) > 0 {
		t.Fatalf("%d bytes of binary data left over", len(tail))
	}
	return r.Status, res
}

// fp32 reads an FP32 output, from JSON or binary.
func (o specOutput) fp32(t testing.TB) []float32 {
	t.Helper()
	if o.Datatype != "FP32" {
		t.Fatalf("output %s is %s", o.Name, o.Datatype)
	}
	if o.bin != nil {
		out := make([]float32, len(o.bin)/4)
		for i := range out {
			out[i] = math.Float32frombits(binary.LittleEndian.Uint32(o.bin[4*i:]))
		}
		return out
	}
	out := make([]float32, len(o.Data))
	for i, v := range o.Data {
		out[i] = float32(v.(float64))
	}
	return out
}

// strs reads a BYTES output, from JSON or binary (4-byte lengths).
func (o specOutput) strs(t testing.TB) []string {
	t.Helper()
	if o.Datatype != "BYTES" {
		t.Fatalf("output %s is %s", o.Name, o.Datatype)
	}
	var out []string
	if o.bin != nil {
		for b := o.bin; len(b) > 0; {
			n := binary.LittleEndian.Uint32(b)
			out, b = append(out, string(b[4:4+n])), b[4+n:]
		}
		return out
	}
	for _, v := range o.Data {
		out = append(out, v.(string))
	}
	return out
}

func fp32Bytes(v []float32) []byte {
	b := make([]byte, 0, 4*len(v))
	for _, x := range v {
		b = binary.LittleEndian.AppendUint32(b, math.Float32bits(x))
	}
	return b
}

// bytesElems encodes BYTES elements for the binary section.
func bytesElems(elems ...[]byte) []byte {
	var b []byte
	for _, e := range elems {
		b = binary.LittleEndian.AppendUint32(b, uint32(len(e)))
		b = append(b, e...)
	}
	return b
}

var (
	oipRegistryOnce sync.Once
	oipRegistry     *inference.Registry
	oipRegistryErr  error
)

// fashionModel is the shipped fashion model, loaded in the test process to
// preprocess images into the FP32 tensors a client would send.
func fashionModel(t *testing.T) *inference.Model {
	t.Helper()
	oipRegistryOnce.Do(func() {
		oipRegistry, oipRegistryErr = inference.LoadRegistry(inference.RegistryOptions{ORTLib: os.Getenv("ONNXRUNTIME_LIB"), Logger: quiet})
	})
	if oipRegistryErr != nil {
		t.Fatal(oipRegistryErr)
	}
	m, ok := oipRegistry.Model("fashion")
	if !ok {
		t.Fatal("no fashion model")
	}
	return m
}

// gradeScores grades img through the grade route and returns its scores
// in label order, and its label.
func gradeScores(t *testing.T, c *client, labels []string, img []byte) ([]float32, string) {
	t.Helper()
	r := c.multipart("POST", "/api/v1/grades", [][2]string{{"model", "fashion"}}, filePart{"image", "x", img})
	if r.Status != 200 {
		t.Fatalf("grade route: %d %s", r.Status, r.Body)
	}
	g := r.JSON(t)
	scores := g["scores"].(map[string]any)
	out := make([]float32, len(labels))
	for i, l := range labels {
		out[i] = float32(scores[l].(float64))
	}
	return out, g["label"].(string)
}

// sameScores checks one row of an output against the grade route's scores.
func sameScores(t *testing.T, what string, got, want []float32) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%s: %d scores, want %d", what, len(got), len(want))
	}
	for i := range want {
		// The same input through the same ONNX Runtime session: equal up
		// to the rounding of a different batch composition.
		if math.Abs(float64(got[i]-want[i])) > 1e-6 {
			t.Fatalf("%s: score %d is %v, the grade route says %v\n got %v\nwant %v", what, i, got[i], want[i], got, want)
		}
	}
}

func TestOIPMatchesGradeRoute(t *testing.T) {
	needInference(t)
	s := startIngest(t)
	c, _ := s.newUser(t)
	m := fashionModel(t)
	labels := m.Labels
	images := [][]byte{pngImage(t, 28, 28), jpegImage(t, 64, 48), datasetImage(t, "retina.jpg")}
	want := make([][]float32, len(images))
	wantLabel := make([]string, len(images))
	tensors := make([][]float32, len(images))
	for i, img := range images {
		want[i], wantLabel[i] = gradeScores(t, c, labels, img)
		var err error
		if tensors[i], err = m.Preprocess(img); err != nil {
			t.Fatal(err)
		}
	}
	const path = "/v2/models/fashion/infer"
	check := func(t *testing.T, res specResponse, rows []int) {
		t.Helper()
		if res.ModelName != "fashion" || res.ModelVersion != "1" || len(res.Outputs) != 1 {
			t.Fatalf("response %+v", res)
		}
		o := res.Outputs[0]
		if o.Name != "probabilities" || len(o.Shape) != 2 || o.Shape[0] != int64(len(rows)) || o.Shape[1] != int64(len(labels)) {
			t.Fatalf("output %s %s %v", o.Name, o.Datatype, o.Shape)
		}
		got := o.fp32(t)
		for k, i := range rows {
			sameScores(t, fmt.Sprintf("row %d (image %d)", k, i), got[k*len(labels):(k+1)*len(labels)], want[i])
		}
	}

	t.Run("JSON FP32 flat, batch of three, id echoed", func(t *testing.T) {
		var flat []float32
		for _, x := range tensors {
			flat = append(flat, x...)
		}
		st, res := c.specInfer(path, specRequest{ID: "req-42", Inputs: []specInput{{Name: "pixels", Shape: []int64{3, 1, 28, 28}, Datatype: "FP32", Data: flat}}})
		if st != 200 {
			t.Fatalf("%d %s", st, res.Error)
		}
		if res.ID == nil || *res.ID != "req-42" {
			t.Fatalf("id %v, want req-42", res.ID)
		}
		check(t, res, []int{0, 1, 2})
		// Each row is a grade, stored like every other (read back by id).
		ids := strings.Split(res.Parameters["grade_ids"].(string), ",")
		if len(ids) != 3 {
			t.Fatalf("grade_ids %v", res.Parameters)
		}
		eventually(t, "the grade in the history", 30*time.Second, func() bool {
			r := c.do("GET", "/api/v1/grades/"+ids[2], nil, nil)
			return r.Status == 200 && r.JSON(t)["status"] == "completed" && r.JSON(t)["label"] == wantLabel[2]
		})
	})

	t.Run("JSON FP32 nested as the shape, versioned path, no id", func(t *testing.T) {
		rows := make([][]float32, 28)
		for y := range rows {
			rows[y] = tensors[1][y*28 : (y+1)*28]
		}
		nested := [][][][]float32{{rows}}
		st, res := c.specInfer("/v2/models/fashion/versions/1/infer", specRequest{Inputs: []specInput{{Name: "pixels", Shape: []int64{1, 1, 28, 28}, Datatype: "FP32", Data: nested}}})
		if st != 200 {
			t.Fatalf("%d %s", st, res.Error)
		}
		if res.ID != nil {
			t.Fatalf("id %q echoed without one in the request", *res.ID)
		}
		check(t, res, []int{1})
	})

	t.Run("binary FP32 in, binary out", func(t *testing.T) {
		bin := append(fp32Bytes(tensors[2]), fp32Bytes(tensors[0])...)
		st, res := c.specInfer(path, specRequest{
			Inputs:  []specInput{{Name: "pixels", Shape: []int64{2, 1, 28, 28}, Datatype: "FP32", bin: bin}},
			Outputs: []specOutputReq{{Name: "probabilities", Parameters: map[string]any{"binary_data": true}}}})
		if st != 200 {
			t.Fatalf("%d %s", st, res.Error)
		}
		if res.Outputs[0].bin == nil {
			t.Fatal("output not binary")
		}
		check(t, res, []int{2, 0})
	})

	t.Run("binary_data_output for the whole request", func(t *testing.T) {
		st, res := c.specInfer(path, specRequest{Parameters: map[string]any{"binary_data_output": true},
			Inputs: []specInput{{Name: "pixels", Shape: []int64{1, 1, 28, 28}, Datatype: "FP32", bin: fp32Bytes(tensors[0])}}})
		if st != 200 || res.Outputs[0].bin == nil {
			t.Fatalf("%d %s %+v", st, res.Error, res.Outputs)
		}
		check(t, res, []int{0})
	})

	t.Run("BYTES images by the binary extension", func(t *testing.T) {
		st, res := c.specInfer(path, specRequest{Inputs: []specInput{{Name: "pixels", Shape: []int64{3}, Datatype: "BYTES",
			bin: bytesElems(images[0], images[1], images[2])}}})
		if st != 200 {
			t.Fatalf("%d %s", st, res.Error)
		}
		check(t, res, []int{0, 1, 2})
	})

	t.Run("BYTES image with classification", func(t *testing.T) {
		st, res := c.specInfer(path, specRequest{
			Inputs:  []specInput{{Name: "pixels", Shape: []int64{1}, Datatype: "BYTES", bin: bytesElems(images[2])}},
			Outputs: []specOutputReq{{Name: "probabilities", Parameters: map[string]any{"classification": 3}}}})
		if st != 200 {
			t.Fatalf("%d %s", st, res.Error)
		}
		o := res.Outputs[0]
		if o.Datatype != "BYTES" || len(o.Shape) != 2 || o.Shape[0] != 1 || o.Shape[1] != 3 {
			t.Fatalf("classification output %s %v", o.Datatype, o.Shape)
		}
		classes := o.strs(t)
		prev := float32(math.Inf(1))
		for k, cl := range classes {
			parts := strings.SplitN(cl, ":", 3)
			if len(parts) != 3 {
				t.Fatalf("%q is not score:index:label", cl)
			}
			score, err := strconv.ParseFloat(parts[0], 32)
			idx, err2 := strconv.Atoi(parts[1])
			if err != nil || err2 != nil || idx < 0 || idx >= len(labels) || parts[2] != labels[idx] {
				t.Fatalf("%q: bad score, index or label", cl)
			}
			if math.Abs(score-float64(want[2][idx])) > 1e-6 || float32(score) > prev {
				t.Fatalf("%q: score %v (grade route %v), after %v", cl, score, want[2][idx], prev)
			}
			prev = float32(score)
			if k == 0 && parts[2] != wantLabel[2] {
				t.Fatalf("top class %q, the grade route's label is %q", cl, wantLabel[2])
			}
		}
	})

	t.Run("raw binary request of one JPEG", func(t *testing.T) {
		r := c.do("POST", path, bytes.NewReader(images[1]), map[string]string{"Inference-Header-Content-Length": "0", "Content-Type": "application/octet-stream"})
		st, res := decodeSpecResponse(t, r)
		if st != 200 || res.Outputs[0].bin == nil {
			t.Fatalf("%d %s %+v", st, res.Error, res.Outputs)
		}
		check(t, res, []int{1})
	})
}

func TestOIPMetadataAndHealth(t *testing.T) {
	needInference(t)
	s := startIngest(t)
	c, _ := s.newUser(t)
	anon := s.client(t)

	for _, p := range []string{"/v2/health/live", "/v2/health/ready"} {
		if r := anon.do("GET", p, nil, nil); r.Status != 200 || len(r.Body) != 0 {
			t.Fatalf("%s: %d %q (want 200 with no body, no token needed)", p, r.Status, r.Body)
		}
	}

	r := c.do("GET", "/v2", nil, nil)
	var server struct {
		Name, Version string
		Extensions    []string
	}
	if r.Status != 200 || json.Unmarshal(r.Body, &server) != nil || server.Name == "" || server.Version == "" {
		t.Fatalf("server metadata: %d %s", r.Status, r.Body)
	}
	for _, ext := range []string{"binary_tensor_data", "classification", "statistics"} {
		if !strings.Contains(strings.Join(server.Extensions, " "), ext) {
			t.Errorf("extensions %v lack %s", server.Extensions, ext)
		}
	}

	wantMeta := `{"name":"fashion","versions":["1"],"platform":"onnxruntime_onnx",` +
		`"inputs":[{"name":"pixels","datatype":"FP32","shape":[-1,1,28,28]}],` +
		`"outputs":[{"name":"probabilities","datatype":"FP32","shape":[-1,10]}]}`
	for _, p := range []string{"/v2/models/fashion", "/v2/models/fashion/versions/1", "/v2/models/fashion@1"} {
		r := c.do("GET", p, nil, nil)
		var got, want any
		_ = json.Unmarshal([]byte(wantMeta), &want)
		if r.Status != 200 || json.Unmarshal(r.Body, &got) != nil || fmt.Sprint(got) != fmt.Sprint(want) {
			t.Fatalf("%s: %d %s\nwant %s", p, r.Status, r.Body, wantMeta)
		}
	}
	for _, p := range []string{"/v2/models/fashion/ready", "/v2/models/digits/versions/1/ready"} {
		if r := c.do("GET", p, nil, nil); r.Status != 200 || r.JSON(t)["ready"] != true {
			t.Fatalf("%s: %d %s", p, r.Status, r.Body)
		}
	}

	r = c.json("POST", "/v2/repository/index", `{}`)
	var index []map[string]string
	if r.Status != 200 || json.Unmarshal(r.Body, &index) != nil {
		t.Fatalf("repository index: %d %s", r.Status, r.Body)
	}
	found := false
	for _, m := range index {
		found = found || (m["name"] == "fashion" && m["version"] == "1" && m["state"] == "READY")
	}
	if !found {
		t.Fatalf("repository index %v lacks fashion 1 READY", index)
	}
	if r := c.do("POST", "/v2/repository/models/fashion/load", nil, nil); r.Status != 200 {
		t.Fatalf("load fashion: %d %s", r.Status, r.Body)
	}

	for _, tc := range []struct {
		method, path string
		anon         bool
		status       int
	}{
		{"GET", "/v2", true, 401},
		{"GET", "/v2/models/fashion", true, 401},
		{"POST", "/v2/models/fashion/infer", true, 401},
		{"GET", "/v2/models/fashion/stats", true, 401},
		{"GET", "/v2/models/nosuch", false, 404},
		{"GET", "/v2/models/nosuch/ready", false, 404},
		{"GET", "/v2/models/fashion/versions/2", false, 404},
		{"GET", "/v2/models/fashion/versions/2/ready", false, 404},
		{"POST", "/v2/models/fashion/versions/2/infer", false, 404},
		{"GET", "/v2/models/fashion/versions/2/stats", false, 404},
		{"POST", "/v2/repository/models/nosuch/load", false, 404},
		{"POST", "/v2/repository/models/nosuch/unload", false, 404},
		{"GET", "/v2/models/fashion@2", false, 404},
		{"POST", "/v2/repository/index", false, 400}, // body "not json"
		{"GET", "/v2/nosuch", false, 404},
	} {
		t.Run(tc.method+" "+tc.path, func(t *testing.T) {
			cl := c
			if tc.anon {
				cl = anon
			}
			r := cl.do(tc.method, tc.path, strings.NewReader("not json"), map[string]string{"Content-Type": "application/json"})
			expectOIPError(t, r, tc.status)
		})
	}
}

// expectOIPError checks the status and the protocol's error body
// {"error": "..."}; it returns the message.
func expectOIPError(t *testing.T, r response, status int) string {
	t.Helper()
	if r.Status != status {
		t.Fatalf("status %d, want %d: %s", r.Status, status, truncate(r.Body))
	}
	var body map[string]any
	if err := json.Unmarshal(r.Body, &body); err != nil {
		t.Fatalf("error body is not JSON: %s", truncate(r.Body))
	}
	msg, ok := body["error"].(string)
	if !ok || msg == "" || len(body) != 1 {
		t.Fatalf(`error body %s, want {"error": "..."}`, truncate(r.Body))
	}
	return msg
}

func TestOIPBadRequests(t *testing.T) {
	needInference(t)
	s := startIngest(t)
	c, _ := s.newUser(t)
	zeros := make([]float32, 784)
	pixels := func(shape []int64, datatype string, data any) specRequest {
		return specRequest{Inputs: []specInput{{Name: "pixels", Shape: shape, Datatype: datatype, Data: data}}}
	}
	one := []int64{1, 1, 28, 28}
	photo := datasetImage(t, "flower.jpg")
	for _, tc := range []struct {
		name   string
		path   string
		req    specRequest
		body   string // sent verbatim instead of req, when set
		hlen   string // Inference-Header-Content-Length of body ("auto": up to the end of its JSON)
		status int
		msg    string // substring of the error
	}{
		{name: "unknown model", path: "/v2/models/nosuch/infer", req: pixels(one, "FP32", zeros), status: 404, msg: "unknown model"},
		{name: "unknown version", path: "/v2/models/fashion/versions/7/infer", req: pixels(one, "FP32", zeros), status: 404, msg: "no version"},
		{name: "wrong shape", req: pixels([]int64{1, 1, 28, 27}, "FP32", zeros[:756]), status: 400, msg: "shape [1 1 28 27]"},
		{name: "shape without batch", req: pixels([]int64{1, 28, 28}, "FP32", zeros), status: 400, msg: "shape [1 28 28]"},
		{name: "fewer elements than the shape", req: pixels(one, "FP32", zeros[:783]), status: 400, msg: "needs 784"},
		{name: "wrong datatype", req: pixels(one, "INT64", make([]int64, 784)), status: 400, msg: "datatype INT64"},
		{name: "FP16 for FP32", req: pixels(one, "FP16", zeros), status: 400, msg: "datatype FP16"},
		{name: "unknown datatype", req: pixels(one, "FLOAT", zeros), status: 400, msg: "unknown datatype"},
		{name: "negative dimension", req: pixels([]int64{-1, 1, 28, 28}, "FP32", zeros), status: 400, msg: "negative"},
		{name: "huge shape", req: pixels([]int64{1 << 40, 1 << 40}, "FP32", zeros), status: 400, msg: "holds more than"},
		{name: "value out of range", req: pixels([]int64{1}, "UINT8", []int{300}), status: 400, msg: "out of the UINT8 range"},
		{name: "unknown input", req: specRequest{Inputs: []specInput{{Name: "image", Shape: one, Datatype: "FP32", Data: zeros}}}, status: 400, msg: `unexpected inference input "image"`},
		{name: "two inputs", req: specRequest{Inputs: []specInput{{Name: "pixels", Shape: one, Datatype: "FP32", Data: zeros}, {Name: "b", Shape: []int64{1}, Datatype: "BOOL", Data: []bool{true}}}}, status: 400, msg: "takes one input"},
		{name: "no inputs", req: specRequest{Inputs: []specInput{}}, status: 400, msg: "no inputs"},
		{name: "no data", req: pixels(one, "FP32", nil), status: 400, msg: "data (or the binary_data_size parameter) is required"},
		{name: "batch too large", req: pixels([]int64{33, 1, 28, 28}, "FP32", make([]float32, 33*784)), status: 400, msg: "batch of 33"},
		{name: "unknown output", req: specRequest{Inputs: pixels(one, "FP32", zeros).Inputs, Outputs: []specOutputReq{{Name: "logits"}}}, status: 400, msg: `unexpected inference output "logits"`},
		{name: "classification 0", req: specRequest{Inputs: pixels(one, "FP32", zeros).Inputs, Outputs: []specOutputReq{{Name: "probabilities", Parameters: map[string]any{"classification": 0}}}}, status: 400, msg: "classification 0"},
		{name: "binary_data not a boolean", req: specRequest{Inputs: pixels(one, "FP32", zeros).Inputs, Outputs: []specOutputReq{{Name: "probabilities", Parameters: map[string]any{"binary_data": "yes"}}}}, status: 400, msg: "true or false"},
		{name: "not an image", req: specRequest{Inputs: []specInput{{Name: "pixels", Shape: []int64{1}, Datatype: "BYTES", Data: []string{"hello"}}}}, status: 400, msg: "detected text/plain"},
		{name: "truncated JPEG fails in inference", req: specRequest{Inputs: []specInput{{Name: "pixels", Shape: []int64{1}, Datatype: "BYTES", bin: bytesElems(photo[:len(photo)/3])}}}, status: 400, msg: "batch row 0"},
		{name: "NaN element", req: specRequest{Inputs: []specInput{{Name: "pixels", Shape: one, Datatype: "FP32", bin: fp32Bytes(append([]float32{float32(math.NaN())}, zeros[1:]...))}}}, status: 400, msg: "finite"},
		{name: "malformed JSON", body: `{"inputs": [`, status: 400, msg: "malformed inference request"},
		{name: "id not a string", body: `{"id": 7, "inputs": []}`, status: 400, msg: "malformed inference request"},
		{name: "truncated binary data", body: `{"inputs":[{"name":"pixels","shape":[1,1,28,28],"datatype":"FP32","parameters":{"binary_data_size":3136}}]}` + strings.Repeat("\x00", 100),
			hlen: "auto", status: 400, msg: "binary_data_size 3136 but only 100 bytes"},
		{name: "binary data of the wrong size", body: `{"inputs":[{"name":"pixels","shape":[1,1,28,28],"datatype":"FP32","parameters":{"binary_data_size":100}}]}` + strings.Repeat("\x00", 100),
			hlen: "auto", status: 400, msg: "needs 3136 bytes"},
		{name: "binary data left over", body: `{"inputs":[{"name":"pixels","shape":[1],"datatype":"UINT8","parameters":{"binary_data_size":1}}]}` + "\x01\x02",
			hlen: "auto", status: 400, msg: "1 bytes of binary data follow"},
		{name: "header length larger than the body", body: `{"inputs":[]}`, hlen: "500", status: 400, msg: "Inference-Header-Content-Length is 500"},
		{name: "header length not a number", body: `{"inputs":[]}`, hlen: "x", status: 400, msg: "not a length"},
		{name: "raw binary of the wrong size", body: "abc", hlen: "0", status: 400, msg: "raw binary request"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := tc.path
			if path == "" {
				path = "/v2/models/fashion/infer"
			}
			var r response
			if tc.body != "" {
				h := map[string]string{"Content-Type": "application/octet-stream"}
				switch tc.hlen {
				case "":
				case "auto":
					h["Inference-Header-Content-Length"] = strconv.Itoa(strings.Index(tc.body, "}]}") + 3)
				default:
					h["Inference-Header-Content-Length"] = tc.hlen
				}
				r = c.do("POST", path, strings.NewReader(tc.body), h)
			} else {
				body, hlen := tc.req.encode(t)
				h := map[string]string{"Content-Type": "application/json"}
				if hlen != "" {
					h["Inference-Header-Content-Length"] = hlen
				}
				r = c.do("POST", path, bytes.NewReader(body), h)
			}
			if msg := expectOIPError(t, r, tc.status); !strings.Contains(msg, tc.msg) {
				t.Fatalf("error %q, want it to contain %q", msg, tc.msg)
			}
		})
	}

	// Every datatype of the specification is read (the message is about
	// the model, not the data); the model takes FP32 or BYTES only.
	for _, tc := range []struct {
		datatype string
		data     any
	}{
		{"BOOL", []bool{true}}, {"UINT8", []int{255}}, {"UINT16", []int{65535}}, {"UINT32", []int{1}}, {"UINT64", []uint64{1 << 63}},
		{"INT8", []int{-128}}, {"INT16", []int{-1}}, {"INT32", []int{-1}}, {"INT64", []int64{-1 << 63}},
		{"FP16", []float64{0.5}}, {"FP64", []float64{1e300}},
	} {
		t.Run("datatype "+tc.datatype, func(t *testing.T) {
			body, _ := pixels([]int64{1}, tc.datatype, tc.data).encode(t)
			r := c.do("POST", "/v2/models/fashion/infer", bytes.NewReader(body), map[string]string{"Content-Type": "application/json"})
			if msg := expectOIPError(t, r, 400); !strings.Contains(msg, "datatype "+tc.datatype+"; model fashion takes FP32") {
				t.Fatalf("error %q", msg)
			}
		})
	}
}

// oipModelStat is one $model_stat of a statistics answer.
type oipModelStat struct {
	Name, Version  string
	LastInference  int64                                 `json:"last_inference"`
	InferenceCount uint64                                `json:"inference_count"`
	ExecutionCount uint64                                `json:"execution_count"`
	InferenceStats map[string]struct{ Count, NS uint64 } `json:"inference_stats"`
	BatchStats     []struct {
		BatchSize    int                        `json:"batch_size"`
		ComputeInfer struct{ Count, NS uint64 } `json:"compute_infer"`
	} `json:"batch_stats"`
}

// oipStats reads a statistics route: the answer's text and its entries.
func oipStats(t *testing.T, c *client, path string) (string, []oipModelStat) {
	t.Helper()
	r := c.do("GET", path, nil, nil)
	var stats struct {
		ModelStats []oipModelStat `json:"model_stats"`
	}
	if r.Status != 200 || json.Unmarshal(r.Body, &stats) != nil {
		t.Fatalf("%s: %d %s", path, r.Status, r.Body)
	}
	return string(r.Body), stats.ModelStats
}

// The statistics are the cluster's: two edge replicas on one NATS, each
// answering some of the inferences, report the same counts, which add up
// what both answered. Counts are cumulative (the bucket outlives a test's
// edges), so the test compares them with those before its requests.
func TestOIPStatistics(t *testing.T) {
	needInference(t)
	s := startIngest(t)
	other := startIngest(t)
	c, _ := s.newUser(t)
	oc := other.client(t)
	oc.token = c.token
	m := fashionModel(t)
	x, err := m.Preprocess(pngImage(t, 28, 28))
	if err != nil {
		t.Fatal(err)
	}
	infer := func(c *client, rows int) int {
		var data []float32
		for range rows {
			data = append(data, x...)
		}
		st, res := c.specInfer("/v2/models/fashion/infer", specRequest{Inputs: []specInput{{Name: "pixels", Shape: []int64{int64(rows), 1, 28, 28}, Datatype: "FP32", bin: fp32Bytes(data)}}})
		if res.Error != "" {
			t.Logf("infer: %d %s", st, res.Error)
		}
		return st
	}
	one := func(c *client, path string) oipModelStat {
		t.Helper()
		_, st := oipStats(t, c, path)
		if len(st) != 1 || st[0].Name != "fashion" || st[0].Version != "1" {
			t.Fatalf("%s: %+v, want fashion 1 alone", path, st)
		}
		return st[0]
	}
	before := one(c, "/v2/models/fashion/stats")

	// Rows of 3 on one replica, of 1 on the other; a bad request on each.
	if infer(c, 3) != 200 || infer(oc, 1) != 200 {
		t.Fatal("inference failed")
	}
	bad := specRequest{Inputs: []specInput{{Name: "pixels", Shape: []int64{1, 2}, Datatype: "FP32", Data: []float32{1, 2}}}}
	for _, cl := range []*client{c, oc} {
		if st, _ := cl.specInfer("/v2/models/fashion/infer", bad); st != 400 {
			t.Fatalf("bad request: %d", st)
		}
	}
	// An unknown model is not a model's failure.
	if st, _ := c.specInfer("/v2/models/nosuch/infer", specRequest{Inputs: []specInput{{Name: "pixels", Shape: []int64{1}, Datatype: "FP32", Data: []float32{1}}}}); st != 404 {
		t.Fatalf("unknown model: %d", st)
	}

	var first string
	for _, p := range []string{"/v2/models/fashion/stats", "/v2/models/fashion/versions/1/stats", "/v2/models/fashion@1/stats"} {
		for i, cl := range []*client{c, oc} {
			body, _ := oipStats(t, cl, p)
			st := one(cl, p)
			is, was := st.InferenceStats, before.InferenceStats
			d := func(k string) uint64 { return is[k].Count - was[k].Count }
			if st.InferenceCount-before.InferenceCount != 4 || d("success") != 2 || d("fail") != 2 ||
				d("queue") != 2 || d("compute_infer") != 2 || d("compute_input") != 2 || d("compute_output") != 2 {
				t.Fatalf("replica %d, %s: %s\nbefore the test's requests: %+v", i+1, p, body, before)
			}
			if runs := st.ExecutionCount - before.ExecutionCount; runs < 1 || runs > 4 || is["compute_infer"].NS <= was["compute_infer"].NS ||
				is["success"].NS-was["success"].NS < is["compute_infer"].NS-was["compute_infer"].NS || st.LastInference < before.LastInference || st.LastInference == 0 || len(st.BatchStats) == 0 {
				t.Fatalf("replica %d, %s: durations or executions do not add up: %s", i+1, p, body)
			}
			// Both replicas answer the very same document.
			if first == "" {
				first = body
			} else if body != first {
				t.Fatalf("replica %d, %s answers\n%s\nreplica 1 answered\n%s", i+1, p, body, first)
			}
		}
	}
	for i, cl := range []*client{c, oc} {
		_, all := oipStats(t, cl, "/v2/models/stats")
		names := map[string]uint64{}
		for _, st := range all {
			names[st.Name] = st.InferenceCount
		}
		if names["fashion"]-before.InferenceCount != 4 {
			t.Fatalf("replica %d, all stats: %v", i+1, names)
		}
		if _, ok := names["digits"]; !ok {
			t.Fatalf("replica %d: all stats lack the served model digits: %v", i+1, names)
		}
	}
	if r := c.do("GET", "/v2/models/nosuch/stats", nil, nil); r.Status != http.StatusNotFound {
		t.Fatalf("stats of an unknown model: %d", r.Status)
	}

	// Requests at once on both replicas: their merges conflict and are
	// retried, and none is lost.
	const each = 8
	var wg sync.WaitGroup
	statuses := make(chan int, 2*each)
	for range each {
		for _, cl := range []*client{c, oc} {
			wg.Add(1)
			go func() {
				defer wg.Done()
				statuses <- infer(cl, 1)
			}()
		}
	}
	wg.Wait()
	close(statuses)
	for st := range statuses {
		if st != 200 {
			t.Fatalf("concurrent inference: %d", st)
		}
	}
	for i, cl := range []*client{c, oc} {
		st := one(cl, "/v2/models/fashion/stats")
		if n, ok := st.InferenceCount-before.InferenceCount, st.InferenceStats["success"].Count-before.InferenceStats["success"].Count; n != 4+2*each || ok != 2+2*each {
			t.Fatalf("replica %d after concurrent requests: %d inferences, %d successes; want %d, %d", i+1, n, ok, 4+2*each, 2+2*each)
		}
	}
}

// The repository extension acts on the inference service: unload stops
// serving a model (the grade route and OIP answer 404, the index says
// UNAVAILABLE), load serves it again.
func TestOIPRepositoryUnloadAndLoad(t *testing.T) {
	needInference(t)
	s := startIngest(t)
	c, _ := s.newUser(t)
	img := pngImage(t, 8, 8)
	grade := func() response {
		return c.multipart("POST", "/api/v1/grades", [][2]string{{"model", "digits"}}, filePart{"image", "d.png", img})
	}
	state := func() string {
		r := c.json("POST", "/v2/repository/index", `{}`)
		var index []map[string]string
		if r.Status != 200 || json.Unmarshal(r.Body, &index) != nil {
			t.Fatalf("repository index: %d %s", r.Status, r.Body)
		}
		for _, m := range index {
			if m["name"] == "digits" {
				return m["state"] + " " + m["reason"]
			}
		}
		return "absent"
	}
	if r := c.do("POST", "/v2/repository/models/digits/unload", nil, nil); r.Status != 200 {
		t.Fatalf("unload: %d %s", r.Status, r.Body)
	}
	// Loaded again whatever happens below: other tests grade with digits.
	t.Cleanup(func() { c.do("POST", "/v2/repository/models/digits/load", nil, nil) })
	if st := state(); !strings.HasPrefix(st, "UNAVAILABLE unloaded") {
		t.Errorf("index after unload: %s", st)
	}
	if r := grade(); r.Status != 404 {
		t.Errorf("grade of an unloaded model: %d %s", r.Status, r.Body)
	}
	if r := c.do("GET", "/v2/models/digits/ready", nil, nil); r.Status != 404 {
		t.Errorf("ready of an unloaded model: %d %s", r.Status, r.Body)
	}
	// Unloading is remembered (the model state bucket), and again is a
	// no-op as in Triton; a model the repository does not have is a 404.
	if r := c.do("POST", "/v2/repository/models/digits/unload", nil, nil); r.Status != 200 {
		t.Errorf("second unload: %d %s", r.Status, r.Body)
	}
	if st := state(); !strings.HasPrefix(st, "UNAVAILABLE unloaded") {
		t.Errorf("index after the second unload: %s", st)
	}
	if r := c.do("POST", "/v2/repository/models/no-such-model/unload", nil, nil); r.Status != 404 {
		t.Errorf("unload of an unknown model: %d %s", r.Status, r.Body)
	}
	if r := c.do("POST", "/v2/repository/models/digits/load", nil, nil); r.Status != 200 {
		t.Fatalf("load: %d %s", r.Status, r.Body)
	}
	if st := state(); st != "READY " {
		t.Errorf("index after load: %q", st)
	}
	if r := grade(); r.Status != 200 {
		t.Fatalf("grade after load: %d %s", r.Status, r.Body)
	}
}

// The trace context of an OIP request travels in the events it publishes
// (as on every route) and on to the grade inference publishes.
func TestOIPCarriesTraceparent(t *testing.T) {
	needInference(t)
	s := startIngest(t)
	c, _ := s.newUser(t)
	nc, err := nats.Connect(natsURL)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	submitted, err := nc.SubscribeSync(bus.SubjectTensorSubmitted)
	if err != nil {
		t.Fatal(err)
	}
	completed, err := nc.SubscribeSync(bus.SubjectGradeCompleted)
	if err != nil {
		t.Fatal(err)
	}
	_ = nc.Flush()
	tp := "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
	body, _ := specRequest{ID: "traced", Inputs: []specInput{{Name: "pixels", Shape: []int64{1, 1, 28, 28}, Datatype: "FP32", Data: make([]float32, 784)}}}.encode(t)
	r := c.do("POST", "/v2/models/fashion@1/infer", bytes.NewReader(body), map[string]string{"Content-Type": "application/json", "traceparent": tp, "X-Request-Id": "oip-trace-1"})
	if r.Status != 200 {
		t.Fatalf("infer: %d %s", r.Status, r.Body)
	}
	var res specResponse
	if json.Unmarshal(r.Body, &res) != nil || res.ModelVersion != "1" {
		t.Fatalf("response %s", r.Body)
	}
	for _, sub := range []*nats.Subscription{submitted, completed} {
		for {
			msg, err := sub.NextMsg(10 * time.Second)
			if err != nil {
				t.Fatalf("no event on %s with the request's trace: %v", sub.Subject, err)
			}
			if msg.Header.Get(bus.HeaderRequestID) != "oip-trace-1" {
				continue // another test's
			}
			if got := msg.Header.Get(bus.HeaderTraceparent); got != tp {
				t.Errorf("%s: traceparent %q, want %q", sub.Subject, got, tp)
			}
			break
		}
	}
}

// Rows larger than an event carries go through the object store, as
// uploaded images do: an edge that sends every fashion row (3,136 bytes)
// that way (GRADELINE_OIP_INLINE_TENSOR_BYTES=1024) answers a batch of 32
// in binary and in JSON (one up to the body limit) with the scores of an
// edge that sends them inline, its rows' objects are in the bucket (the
// other's are not), and a body over the limit is a 413 in the protocol's
// shape.
func TestOIPLargeTensorsThroughTheObjectStore(t *testing.T) {
	needInference(t)
	const limit = 1 << 20 // the least body limit an edge has
	inline := startIngest(t)
	stored := startIngest(t, func(c *ingest.Config) { c.OIPInlineTensorBytes, c.MaxBodyBytes = 1024, limit })
	c, _ := inline.newUser(t)
	sc := stored.client(t)
	sc.token = c.token
	x, err := fashionModel(t).Preprocess(pngImage(t, 28, 28))
	if err != nil {
		t.Fatal(err)
	}
	rows := func(n int) []float32 {
		var data []float32
		for i := range n {
			for _, v := range x {
				data = append(data, v+float32(i)/64)
			}
		}
		return data
	}
	store, err := bus.ImageStore(t.Context(), testJS(t))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		n    int
		bin  bool
		pad  bool // to the body limit, with white space after the JSON
	}{
		{"binary, 32 rows", 32, true, false},
		{"JSON, 8 rows", 8, false, false},
		{"JSON, 32 rows, the body at the limit", 32, false, true},
		{"JSON, 1 row", 1, false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			in := specInput{Name: "pixels", Shape: []int64{int64(tc.n), 1, 28, 28}, Datatype: "FP32"}
			if tc.bin {
				in.bin = fp32Bytes(rows(tc.n))
			} else {
				in.Data = rows(tc.n)
			}
			req := specRequest{ID: tc.name, Inputs: []specInput{in}}
			body, hlen := req.encode(t)
			if tc.pad {
				body = append(body, bytes.Repeat([]byte{' '}, limit-len(body))...)
			}
			if len(body) > limit {
				t.Fatalf("the request has %d bytes, over the edge's limit", len(body))
			}
			h := map[string]string{"Content-Type": "application/json"}
			if hlen != "" {
				h["Content-Type"], h["Inference-Header-Content-Length"] = "application/octet-stream", hlen
			}
			answers := map[string]specResponse{}
			for name, cl := range map[string]*client{"inline": c, "stored": sc} {
				st, res := decodeSpecResponse(t, cl.do("POST", "/v2/models/fashion/infer", bytes.NewReader(body), h))
				if st != 200 || len(res.Outputs) != 1 {
					t.Fatalf("%s edge: %d %s", name, st, res.Error)
				}
				answers[name] = res
			}
			want, got := answers["inline"].Outputs[0].fp32(t), answers["stored"].Outputs[0].fp32(t)
			if len(got) != 10*tc.n || len(want) != len(got) {
				t.Fatalf("%d and %d scores, want %d", len(want), len(got), 10*tc.n)
			}
			for i := range want {
				if math.Abs(float64(want[i]-got[i])) > 1e-6 {
					t.Fatalf("score %d: through the store %v, inline %v", i, got[i], want[i])
				}
			}
			if *answers["stored"].ID != tc.name {
				t.Fatalf("id %q", *answers["stored"].ID)
			}
			// Each row of the storing edge is an object named by its grade;
			// the inline edge's rows are not.
			for name, res := range answers {
				ids := strings.Split(res.Parameters["grade_ids"].(string), ",")
				if len(ids) != tc.n {
					t.Fatalf("%s edge: grade ids %v", name, ids)
				}
				for _, id := range ids {
					info, err := store.GetInfo(t.Context(), "tensors/"+id)
					switch {
					case name == "stored" && (err != nil || info.Size != 4*28*28):
						t.Fatalf("row %s of the storing edge: %v %+v", id, err, info)
					case name == "inline" && !errors.Is(err, jetstream.ErrObjectNotFound):
						t.Fatalf("row %s of the inline edge is in the store: %v", id, err)
					}
				}
			}
		})
	}

	// Over the body limit: 413 with the protocol's {"error": ...}.
	for _, tc := range []struct {
		name string
		in   specInput
	}{
		{"JSON, 400 rows", specInput{Name: "pixels", Shape: []int64{400, 1, 28, 28}, Datatype: "FP32", Data: rows(400)}},
		{"binary, 400 rows", specInput{Name: "pixels", Shape: []int64{400, 1, 28, 28}, Datatype: "FP32", bin: fp32Bytes(rows(400))}},
	} {
		t.Run("over the limit, "+tc.name, func(t *testing.T) {
			body, hlen := specRequest{Inputs: []specInput{tc.in}}.encode(t)
			if len(body) <= limit {
				t.Fatalf("the request has %d bytes, not over the limit", len(body))
			}
			h := map[string]string{"Content-Type": "application/json"}
			if hlen != "" {
				h["Content-Type"], h["Inference-Header-Content-Length"] = "application/octet-stream", hlen
			}
			msg := expectOIPError(t, sc.do("POST", "/v2/models/fashion/infer", bytes.NewReader(body), h), http.StatusRequestEntityTooLarge)
			if !strings.Contains(msg, strconv.Itoa(limit)) {
				t.Fatalf("error %q does not name the limit", msg)
			}
		})
	}
}
