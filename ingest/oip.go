package ingest

// The Open Inference Protocol v2 (REST) on the edge, as KServe's
// required_api and Triton's extensions define it: health, server and model
// metadata, inference with JSON or binary tensors (binary_tensor_data),
// classification, statistics and the model repository index. Every
// inference goes through JetStream as a grade does: one event per row of
// the batch (bus.TensorSubmitted for FP32 rows, their data inline or, over
// Config.OIPInlineTensorBytes, in the object store as an uploaded image's;
// bus.ImageSubmitted for BYTES elements holding encoded images), one
// grade.completed or grade.failed per row back, so the scores are those of the grade route
// for the same input and model, and every inference is stored, counted
// and replayable. Errors on these routes are {"error": "..."}, the
// protocol's shape, not the house {code, message, details}.

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"image"
	"log/slog"
	"math"
	"net/http"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/gofiber/fiber/v2"
	"golang.org/x/sync/errgroup"

	"github.com/gradeline/gradeline/bus"
)

// Names the protocol gives things.
const (
	// oipPrefix is the root of every protocol route.
	oipPrefix = "/v2"
	// HeaderInferenceHeaderLength is the binary extension's header: the
	// length of the JSON part of a body that continues with tensor bytes.
	HeaderInferenceHeaderLength = "Inference-Header-Content-Length"
	// oipPlatform is what model metadata says about the backend (Triton's
	// name for ONNX Runtime).
	oipPlatform = "onnxruntime_onnx"
	// oipServerName and oipServerVersion answer GET /v2.
	oipServerName    = "gradeline"
	oipServerVersion = "1.0.0"
	oipTag           = "inference"
)

// oipExtensions are the extensions GET /v2 reports.
var oipExtensions = []string{"binary_tensor_data", "classification", "statistics", "model_repository"}

// isOIPPath tells the protocol's paths (under oipPrefix) from the rest.
func isOIPPath(p string) bool { return p == oipPrefix || strings.HasPrefix(p, oipPrefix+"/") }

// oipErrors turns every error of a protocol route (the handler's, the
// token check's, an unknown path's) into the protocol's {"error": "..."},
// with the status the house error would have had.
func (s *Server) oipErrors(c *fiber.Ctx) error {
	err := c.Next()
	if err == nil {
		return nil
	}
	e := s.classify(c, err)
	msg := e.Message
	if e.Status >= 500 || e.Cause != nil {
		level := slog.LevelWarn
		if e.Status >= 500 {
			level = slog.LevelError
		}
		s.log.Log(c.UserContext(), level, "request failed", "method", c.Method(), "path", c.Path(), "status", e.Status,
			"message", e.Message, "details", e.Details, "cause", e.Cause, "request_id", bus.RequestID(c.UserContext()))
	}
	// Server-side details carry driver or subject text: they stay in the log.
	if len(e.Details) > 0 && e.Status < 500 {
		msg += ": " + strings.Join(e.Details, "; ")
	}
	for k, v := range e.Headers {
		c.Set(k, v)
	}
	return c.Status(e.Status).JSON(fiber.Map{"error": msg})
}

// oipRoutes are the protocol's routes. Health needs no token; everything
// else does, as every other route of the edge.
func (s *Server) oipRoutes() []route {
	model := func(path string) string { return oipPrefix + "/models/:model" + path }
	version := func(path string) string { return oipPrefix + "/models/:model/versions/:version" + path }
	errs := oipErrorResponses
	meta := resp{Desc: "Model metadata.", Schema: oipModelMetadataSchema}
	ready := resp{Desc: "The model is ready.", Schema: M{"type": "object", "properties": M{"name": M{"type": "string"}, "ready": M{"type": "boolean"}}}}
	infer := resp{Desc: "The outputs (JSON, or JSON then binary tensor data when outputs are asked as binary).", Schema: oipInferResponseSchema,
		Headers: map[string]string{HeaderInferenceHeaderLength: "Length of the JSON part when binary output data follows it."}}
	stats := resp{Desc: "Statistics of the inferences of every edge replica, per model and version (Triton's shape): every replica answers the same counts.", Schema: oipStatsSchema}
	rows := []route{
		{Method: "GET", Path: oipPrefix + "/health/live", Tag: oipTag, Summary: "Server live (status code only)", Handler: s.oipLive,
			Responses: map[int]resp{200: {Desc: "Live (empty body)."}}},
		{Method: "GET", Path: oipPrefix + "/health/ready", Tag: oipTag, Summary: "Server ready: JetStream connected and models served (status code only)", Handler: s.oipReady,
			Responses: map[int]resp{200: {Desc: "Ready (empty body)."}, 503: {Desc: "Not ready (empty body)."}}},
		{Method: "GET", Path: oipPrefix, Tag: oipTag, Summary: "Server metadata: name, version, extensions", Auth: true, Handler: s.oipServerMetadata,
			Responses: errs(map[int]resp{200: {Desc: "Server metadata.", Schema: M{"type": "object", "properties": M{
				"name": M{"type": "string"}, "version": M{"type": "string"}, "extensions": arrOf(M{"type": "string"})}}}})},
		{Method: "GET", Path: oipPrefix + "/models/stats", Tag: oipTag, Summary: "Statistics of every model", Auth: true, Handler: s.oipStats,
			Responses: errs(map[int]resp{200: stats})},
	}
	for _, p := range []func(string) string{model, version} {
		rows = append(rows,
			route{Method: "GET", Path: p(""), Tag: oipTag, Summary: "Model metadata: versions, platform, inputs and outputs (-1: any batch size)", Auth: true, Handler: s.oipModelMetadata,
				Responses: errs(map[int]resp{200: meta})},
			route{Method: "GET", Path: p("/ready"), Tag: oipTag, Summary: "Model ready", Auth: true, Handler: s.oipModelReady,
				Responses: errs(map[int]resp{200: ready})},
			route{Method: "POST", Path: p("/infer"), Tag: oipTag, Summary: "Inference", Auth: true, Handler: s.oipInfer,
				Description: "Open Inference Protocol v2 inference: JSON tensors (row-major, flat or nested), or a JSON header of " +
					"`Inference-Header-Content-Length` bytes followed by binary tensor data (`binary_data_size`); `binary_data` or " +
					"`binary_data_output` asks for binary outputs, `classification: k` for the top k as BYTES `score:index:label`. " +
					"An image model takes its input as FP32 already preprocessed, or as BYTES elements holding encoded images " +
					"(JPEG, PNG, GIF, WebP, BMP), preprocessed as the grade route does. Each row of the batch is one grade through JetStream; " +
					"a row too large for an event (over 640 KiB, or GRADELINE_OIP_INLINE_TENSOR_BYTES) goes through the object store, so any row " +
					"fits up to the body limit (GRADELINE_MAX_BODY_BYTES, 413 above it).",
				Body: &reqBody{Required: true, Content: map[string]M{"application/json": oipInferRequestSchema,
					"application/octet-stream": {"type": "string", "format": "binary", "description": "JSON header, then the binary tensor data."}},
					// A complete request for the digits model (8x8 grey).
					Example: M{"id": "42", "inputs": []M{{"name": "pixels", "shape": []int{1, 1, 8, 8}, "datatype": "FP32", "data": make([]float32, 64)}},
						"outputs": []M{{"name": "probabilities", "parameters": M{"classification": 3}}}}},
				Responses: errs(map[int]resp{200: infer, 413: {Desc: "The body is over the limit (GRADELINE_MAX_BODY_BYTES): {\"error\": \"...\"}.", Schema: oipErrorSchema},
					503: {Desc: "JetStream or the inference service did not answer in time.", Schema: oipErrorSchema}})},
			route{Method: "GET", Path: p("/stats"), Tag: oipTag, Summary: "Model statistics", Auth: true, Handler: s.oipStats,
				Responses: errs(map[int]resp{200: stats})},
		)
	}
	rows = append(rows,
		route{Method: "POST", Path: oipPrefix + "/repository/index", Tag: oipTag, Summary: "Model repository index", Auth: true, Handler: s.oipRepositoryIndex,
			Body:      &reqBody{Content: map[string]M{"application/json": {"type": "object", "properties": M{"ready": M{"type": "boolean"}}}}},
			Responses: errs(map[int]resp{200: {Desc: "Every version of every model in the inference service's folders: READY, or UNAVAILABLE with the reason (load error, version policy, unloaded).", Schema: arrOf(M{"type": "object", "properties": M{"name": M{"type": "string"}, "version": M{"type": "string"}, "state": M{"type": "string"}, "reason": M{"type": "string"}}})}})},
		route{Method: "POST", Path: oipPrefix + "/repository/models/:model/load", Tag: oipTag, Summary: "Load a model: every inference replica reads it from its folder again (after an unload, or to retry versions that failed)", Auth: true, Handler: s.oipRepositoryLoad,
			Responses: errs(map[int]resp{200: {Desc: "The model is served (empty body)."}})},
		route{Method: "POST", Path: oipPrefix + "/repository/models/:model/unload", Tag: oipTag, Summary: "Unload a model: every inference replica stops serving it (grades in flight finish) until it is loaded; remembered across restarts and by new replicas; unloading again is a no-op", Auth: true, Handler: s.oipRepositoryUnload,
			Responses: errs(map[int]resp{200: {Desc: "The model is no longer served (empty body)."}})},
	)
	return rows
}

// Schemas of the protocol's bodies in the OpenAPI document.
var (
	oipErrorSchema  = M{"type": "object", "required": []string{"error"}, "properties": M{"error": M{"type": "string"}}}
	oipTensorSchema = M{"type": "object", "properties": M{"name": M{"type": "string"},
		"datatype": M{"type": "string", "enum": strings.Split(oipDatatypes, ", ")}, "shape": arrOf(M{"type": "integer"})}}
	oipModelMetadataSchema = M{"type": "object", "properties": M{"name": M{"type": "string"}, "versions": arrOf(M{"type": "string"}),
		"platform": M{"type": "string"}, "inputs": arrOf(oipTensorSchema), "outputs": arrOf(oipTensorSchema)}}
	oipParamsSchema       = M{"type": "object", "additionalProperties": M{"oneOf": []M{{"type": "string"}, {"type": "number"}, {"type": "boolean"}}}}
	oipInferRequestSchema = M{"type": "object", "required": []string{"inputs"}, "properties": M{
		"id": M{"type": "string"}, "parameters": oipParamsSchema,
		"inputs": arrOf(M{"type": "object", "required": []string{"name", "shape", "datatype"}, "properties": M{
			"name": M{"type": "string"}, "shape": arrOf(M{"type": "integer", "minimum": 0}),
			"datatype": M{"type": "string", "enum": strings.Split(oipDatatypes, ", ")}, "parameters": oipParamsSchema,
			"data": M{"type": "array", "description": "Row-major elements, flat or nested as the shape."}}}),
		"outputs": arrOf(M{"type": "object", "required": []string{"name"}, "properties": M{"name": M{"type": "string"}, "parameters": oipParamsSchema}}),
	}}
	oipInferResponseSchema = M{"type": "object", "properties": M{"model_name": M{"type": "string"}, "model_version": M{"type": "string"},
		"id": M{"type": "string"}, "outputs": arrOf(M{"type": "object", "properties": M{"name": M{"type": "string"},
			"datatype": M{"type": "string"}, "shape": arrOf(M{"type": "integer"}), "parameters": oipParamsSchema, "data": M{"type": "array"}}})}}
	oipStatsSchema = M{"type": "object", "properties": M{"model_stats": arrOf(M{"type": "object"})}}
)

// oipErrorResponses adds the protocol's error answers to r.
func oipErrorResponses(r map[int]resp) map[int]resp {
	for code, desc := range map[int]string{
		400: "Bad request: {\"error\": \"...\"}.",
		401: "Missing, expired or invalid token: {\"error\": \"...\"}.",
		404: "Unknown model or version: {\"error\": \"...\"}.",
		503: "A backing service is unavailable: {\"error\": \"...\"}.",
	} {
		if _, ok := r[code]; !ok {
			r[code] = resp{Desc: desc, Schema: oipErrorSchema}
		}
	}
	return r
}

// oipLive answers 200 with no body while the process serves HTTP.
func (s *Server) oipLive(c *fiber.Ctx) error {
	c.Status(http.StatusOK)
	return nil
}

// oipReady answers 200 with no body when the edge can grade: not shutting
// down, NATS connected and the inference service serving models.
func (s *Server) oipReady(c *fiber.Ctx) error {
	c.Status(http.StatusServiceUnavailable)
	if s.isStopping() || !s.nc.IsConnected() {
		return nil
	}
	ctx, cancel := context.WithTimeout(c.UserContext(), 2*time.Second)
	defer cancel()
	if models, err := s.models.get(ctx, s); err != nil || len(models) == 0 {
		return nil
	}
	c.Status(http.StatusOK)
	return nil
}

func (s *Server) oipServerMetadata(c *fiber.Ctx) error {
	return c.JSON(fiber.Map{"name": oipServerName, "version": oipServerVersion, "extensions": oipExtensions})
}

// oipModelRef is the model and version the path names: .../models/{m}
// with .../versions/{v}, or {m} written as name@version.
func oipModelRef(c *fiber.Ctx) (name, version string) {
	name, version = bus.SplitModelRef(c.Params("model"))
	if v := c.Params("version"); v != "" {
		version = v
	}
	return name, version
}

// oipModel resolves the model (and version, when the path names one) of
// the request: 404 for an unknown one. The info's Version is the version
// asked for, else the newest served.
func (s *Server) oipModel(c *fiber.Ctx) (bus.ModelInfo, error) {
	name, version := oipModelRef(c)
	if !validModel.MatchString(name) || (version != "" && !validModel.MatchString(version)) {
		return bus.ModelInfo{}, errorf(http.StatusNotFound, "unknown model %q", c.Params("model"))
	}
	models, known, err := s.models.has(c.UserContext(), s, name, version)
	if err != nil {
		return bus.ModelInfo{}, err
	}
	i := slices.IndexFunc(models, func(m bus.ModelInfo) bool { return m.Name == name })
	if i < 0 {
		names := make([]string, len(models))
		for i, m := range models {
			names[i] = m.Name
		}
		return bus.ModelInfo{}, errorf(http.StatusNotFound, "unknown model %q; available models: %s", name, strings.Join(names, ", "))
	}
	info := models[i]
	if !known {
		return bus.ModelInfo{}, errorf(http.StatusNotFound, "model %q has no version %q; versions: %s", name, version, strings.Join(info.ServedVersions(), ", "))
	}
	if version != "" {
		info.Version = version
	}
	return info, nil
}

// oipInputShape is the shape of one image as the model takes it, without
// the batch dimension.
func oipInputShape(in bus.ModelInput) []int64 {
	if in.Layout == "NHWC" {
		return []int64{int64(in.Height), int64(in.Width), int64(in.Channels)}
	}
	return []int64{int64(in.Channels), int64(in.Height), int64(in.Width)}
}

// oipOutputName is the model's output tensor; an inference replica older
// than bus.ModelOutput does not say, and its output is then "output".
func oipOutputName(info bus.ModelInfo) string {
	if info.Output.Name != "" {
		return info.Output.Name
	}
	return "output"
}

// oipTensorMeta describes one tensor in model metadata.
type oipTensorMeta struct {
	Name     string  `json:"name"`
	Datatype string  `json:"datatype"`
	Shape    []int64 `json:"shape"`
}

func (s *Server) oipModelMetadata(c *fiber.Ctx) error {
	info, err := s.oipModel(c)
	if err != nil {
		return err
	}
	return c.JSON(fiber.Map{
		"name":     info.Name,
		"versions": info.ServedVersions(),
		"platform": oipPlatform,
		"inputs":   []oipTensorMeta{{Name: info.Input.Name, Datatype: "FP32", Shape: append([]int64{-1}, oipInputShape(info.Input)...)}},
		"outputs":  []oipTensorMeta{{Name: oipOutputName(info), Datatype: "FP32", Shape: []int64{-1, int64(len(info.Labels))}}},
	})
}

func (s *Server) oipModelReady(c *fiber.Ctx) error {
	info, err := s.oipModel(c)
	if err != nil {
		return err
	}
	return c.JSON(fiber.Map{"name": info.Name, "ready": true})
}

// The inference request as the protocol writes it.
type (
	oipParams       map[string]json.RawMessage
	oipInferRequest struct {
		ID         string             `json:"id"`
		Parameters oipParams          `json:"parameters"`
		Inputs     []oipRequestInput  `json:"inputs"`
		Outputs    []oipRequestOutput `json:"outputs"`
	}
	oipRequestInput struct {
		Name       string          `json:"name"`
		Shape      []int64         `json:"shape"`
		Datatype   string          `json:"datatype"`
		Parameters oipParams       `json:"parameters"`
		Data       json.RawMessage `json:"data"`
	}
	oipRequestOutput struct {
		Name       string    `json:"name"`
		Parameters oipParams `json:"parameters"`
	}
)

// boolean reads a boolean parameter (false when absent).
func (p oipParams) boolean(where, key string) (bool, error) {
	raw, ok := p[key]
	if !ok {
		return false, nil
	}
	var b bool
	if err := json.Unmarshal(raw, &b); err != nil {
		return false, badRequest("%s: parameter %s must be true or false", where, key)
	}
	return b, nil
}

// integer reads an integer parameter; ok is false when it is absent.
func (p oipParams) integer(where, key string) (v int64, ok bool, err error) {
	raw, ok := p[key]
	if !ok {
		return 0, false, nil
	}
	if err := json.Unmarshal(raw, &v); err != nil {
		return 0, true, badRequest("%s: parameter %s must be an integer", where, key)
	}
	return v, true, nil
}

// oipRequest is a parsed inference request: its inputs decoded, its
// outputs resolved.
type oipRequest struct {
	ID      string
	Inputs  []*oipTensor
	Outputs []oipRequestOutput
	// binaryOutput is the request's binary_data_output (or a raw binary
	// request, whose outputs are always binary).
	binaryOutput bool
}

// parseInferRequest reads the body: JSON alone, or (with the header
// length) a JSON header followed by binary tensor data, or (header length
// 0) the raw binary data of the model's one input.
// No shape may hold more than maxElems elements: every element takes at
// least a byte of the body, so the body limit bounds them.
func parseInferRequest(body []byte, headerLen string, info bus.ModelInfo, maxElems int64) (*oipRequest, error) {
	header, rest := body, []byte(nil)
	if headerLen != "" {
		n, err := strconv.ParseInt(strings.TrimSpace(headerLen), 10, 64)
		if err != nil || n < 0 {
			return nil, badRequest("%s: %q is not a length", HeaderInferenceHeaderLength, headerLen)
		}
		if n > int64(len(body)) {
			return nil, badRequest("%s is %d but the body has %d bytes", HeaderInferenceHeaderLength, n, len(body))
		}
		if n == 0 {
			return rawBinaryRequest(body, info)
		}
		header, rest = body[:n], body[n:]
	}
	var req oipInferRequest
	if err := json.Unmarshal(header, &req); err != nil {
		return nil, badRequest("malformed inference request: %v", err)
	}
	if len(req.Inputs) == 0 {
		return nil, badRequest("the request has no inputs")
	}
	binOut, err := req.Parameters.boolean("request", "binary_data_output")
	if err != nil {
		return nil, err
	}
	out := &oipRequest{ID: req.ID, Outputs: req.Outputs, binaryOutput: binOut}
	seen := map[string]bool{}
	for _, in := range req.Inputs {
		if in.Name == "" {
			return nil, badRequest("an input has no name")
		}
		if seen[in.Name] {
			return nil, badRequest("input %s is given twice", in.Name)
		}
		seen[in.Name] = true
		if _, ok := oipElemSize[in.Datatype]; !ok {
			return nil, badRequest("input %s: unknown datatype %q (the protocol's are %s)", in.Name, in.Datatype, oipDatatypes)
		}
		if in.Shape == nil {
			return nil, badRequest("input %s: shape is required", in.Name)
		}
		count, err := elementCount(in.Name, in.Shape, maxElems)
		if err != nil {
			return nil, err
		}
		t := &oipTensor{Name: in.Name, Datatype: in.Datatype, Shape: in.Shape}
		size, hasSize, err := in.Parameters.integer("input "+in.Name, "binary_data_size")
		if err != nil {
			return nil, err
		}
		switch {
		case hasSize && len(in.Data) > 0:
			return nil, badRequest("input %s: both data and binary_data_size are given", in.Name)
		case hasSize:
			if size < 0 {
				return nil, badRequest("input %s: binary_data_size %d is negative", in.Name, size)
			}
			if size > int64(len(rest)) {
				return nil, badRequest("input %s: binary_data_size %d but only %d bytes of binary data are left (truncated body?)", in.Name, size, len(rest))
			}
			if err := takeBinary(t, rest[:size], count); err != nil {
				return nil, err
			}
			rest = rest[size:]
		case len(in.Data) == 0 || string(in.Data) == "null":
			return nil, badRequest("input %s: data (or the binary_data_size parameter) is required", in.Name)
		default:
			if err := parseJSONData(t, in.Data, count); err != nil {
				return nil, err
			}
		}
		out.Inputs = append(out.Inputs, t)
	}
	if len(rest) > 0 {
		return nil, badRequest("%d bytes of binary data follow the inputs' binary_data_size", len(rest))
	}
	return out, nil
}

// rawBinaryRequest reads a body that is only the data of the model's one
// input (Inference-Header-Content-Length: 0): one encoded image (BYTES
// [1]) when it looks like one, else FP32 rows of the input's shape. Its
// outputs are binary, as the extension says.
func rawBinaryRequest(body []byte, info bus.ModelInfo) (*oipRequest, error) {
	t := &oipTensor{Name: info.Input.Name}
	if acceptedTypes[http.DetectContentType(body)] {
		t.Datatype, t.Shape, t.elems = "BYTES", []int64{1}, [][]byte{body}
	} else {
		shape := oipInputShape(info.Input)
		row := int64(4)
		for _, d := range shape {
			row *= d
		}
		if len(body) == 0 || int64(len(body))%row != 0 {
			return nil, badRequest("raw binary request: %d bytes are neither an encoded image nor FP32 rows of %v (%d bytes each)", len(body), shape, row)
		}
		t.Datatype, t.Shape, t.raw = "FP32", append([]int64{int64(len(body)) / row}, shape...), body
	}
	return &oipRequest{Inputs: []*oipTensor{t}, binaryOutput: true}, nil
}

// oipWantOutput is one output the response carries.
type oipWantOutput struct {
	binary         bool
	classification int
}

// resolveOutputs checks the requested outputs against the model's one
// output: none asked means that one with the request's defaults.
func resolveOutputs(req *oipRequest, info bus.ModelInfo) ([]oipWantOutput, error) {
	name := oipOutputName(info)
	if len(req.Outputs) == 0 {
		return []oipWantOutput{{binary: req.binaryOutput}}, nil
	}
	var out []oipWantOutput
	for i, o := range req.Outputs {
		if o.Name != name {
			return nil, badRequest("unexpected inference output %q for model %s; its output is %q", o.Name, info.Name, name)
		}
		if i > 0 {
			return nil, badRequest("output %s is requested twice", o.Name)
		}
		w := oipWantOutput{binary: req.binaryOutput}
		if _, ok := o.Parameters["binary_data"]; ok {
			b, err := o.Parameters.boolean("output "+o.Name, "binary_data")
			if err != nil {
				return nil, err
			}
			w.binary = b
		}
		k, ok, err := o.Parameters.integer("output "+o.Name, "classification")
		if err != nil {
			return nil, err
		}
		if ok {
			if k < 1 {
				return nil, badRequest("output %s: classification %d must be at least 1", o.Name, k)
			}
			w.classification = int(min(k, int64(len(info.Labels))))
		}
		out = append(out, w)
	}
	return out, nil
}

// oipRow is one row of the batch on its way through JetStream.
type oipRow struct {
	ev bus.Event
	id string
	// up is stored before the event: an encoded image (BYTES), or an FP32
	// row larger than an event carries (Config.OIPInlineTensorBytes).
	up     *upload
	result chan gradeResult
}

// oipTiming is what one request spent where, for its statistics.
type oipTiming struct {
	input, wait, infer, output time.Duration
	batchSizes                 []int
	inferences                 []time.Duration
}

// oipInfer answers POST .../infer.
func (s *Server) oipInfer(c *fiber.Ctx) error {
	start := time.Now()
	info, err := s.oipModel(c)
	if err != nil {
		return err
	}
	var tm oipTiming
	n, err := s.oipRun(c, info, &tm)
	s.recordOIP(c.UserContext(), info, start, n, tm, err)
	return err
}

// oipRun parses, grades and answers one inference request; it returns the
// number of inferences (rows) it answered.
func (s *Server) oipRun(c *fiber.Ctx, info bus.ModelInfo, tm *oipTiming) (int, error) {
	t0 := time.Now()
	req, err := parseInferRequest(c.Body(), c.Get(HeaderInferenceHeaderLength), info, s.cfg.MaxBodyBytes)
	if err != nil {
		return 0, err
	}
	outs, err := resolveOutputs(req, info)
	if err != nil {
		return 0, err
	}
	rows, err := s.oipRows(c, info, req)
	if err != nil {
		return 0, err
	}
	tm.input = time.Since(t0)
	results, err := s.oipGrade(c, rows, tm)
	if err != nil {
		return 0, err
	}
	t1 := time.Now()
	labels := info.Labels
	scores := make([]float32, 0, len(rows)*len(labels))
	version := info.Version
	for i, r := range results {
		g, ok := r.(*bus.GradeCompleted)
		if !ok {
			f, _ := r.(*bus.GradeFailed)
			reason := "no result"
			if f != nil {
				reason = f.Reason
			}
			return 0, badRequest("input %s, batch row %d: %s", req.Inputs[0].Name, i, reason)
		}
		if g.ModelVersion != "" {
			version = g.ModelVersion
		}
		for _, l := range labels {
			v, ok := g.Scores[l]
			if !ok {
				return 0, fmt.Errorf("grade %s has no score for label %q", g.GradeID, l)
			}
			scores = append(scores, float32(v))
		}
		tm.batchSizes = append(tm.batchSizes, max(g.BatchSize, 1))
		tm.inferences = append(tm.inferences, time.Duration(g.InferenceMS*float64(time.Millisecond)))
	}
	outputs := make([]*oipOutput, len(outs))
	for i, w := range outs {
		o := &oipOutput{Name: oipOutputName(info), Datatype: "FP32", Shape: []int64{int64(len(rows)), int64(len(labels))}, f32: scores, binary: w.binary}
		if w.classification > 0 {
			o.Datatype, o.Shape, o.f32 = "BYTES", []int64{int64(len(rows)), int64(w.classification)}, nil
			o.elems = classify(scores, labels, w.classification)
		}
		outputs[i] = o
	}
	ids := make([]string, len(rows))
	for i, r := range rows {
		ids[i] = r.id
	}
	err = writeInferResponse(c, info.Name, version, req.ID, strings.Join(ids, ","), outputs)
	tm.output = time.Since(t1)
	return len(rows), err
}

// classify returns, per row of scores, the k highest as the
// classification extension writes them: "score:index:label", highest
// first, ties by index.
func classify(scores []float32, labels []string, k int) [][]byte {
	n := len(labels)
	var out [][]byte
	for r := 0; r+n <= len(scores); r += n {
		row := scores[r : r+n]
		idx := make([]int, n)
		for i := range idx {
			idx[i] = i
		}
		sort.SliceStable(idx, func(a, b int) bool { return row[idx[a]] > row[idx[b]] })
		for _, i := range idx[:k] {
			s := strconv.FormatFloat(float64(row[i]), 'g', -1, 32) + ":" + strconv.Itoa(i) + ":" + labels[i]
			out = append(out, []byte(s))
		}
	}
	return out
}

// oipRows checks the request's input against the model and makes one
// event per row of its batch: FP32 rows as bus.TensorSubmitted, BYTES
// elements (encoded images) as bus.ImageSubmitted, as the grade route
// makes them.
func (s *Server) oipRows(c *fiber.Ctx, info bus.ModelInfo, req *oipRequest) ([]*oipRow, error) {
	if len(req.Inputs) != 1 {
		return nil, badRequest("model %s takes one input (%s), the request has %d", info.Name, info.Input.Name, len(req.Inputs))
	}
	t := req.Inputs[0]
	if t.Name != info.Input.Name {
		return nil, badRequest("unexpected inference input %q for model %s; its input is %q", t.Name, info.Name, info.Input.Name)
	}
	shape := oipInputShape(info.Input)
	want := fmt.Sprintf("FP32 %v or BYTES [-1] holding encoded images", append([]int64{-1}, shape...))
	batch := func(n int64) error {
		if n < 1 || n > int64(max(info.MaxBatch, 1)) {
			return badRequest("input %s: batch of %d; model %s takes 1 to %d", t.Name, n, info.Name, max(info.MaxBatch, 1))
		}
		return nil
	}
	owner := userOf(c)
	// Only a version the request names is pinned: otherwise inference
	// grades with its newest, which a reload may have just changed.
	_, version := oipModelRef(c)
	switch t.Datatype {
	case "FP32":
		if len(t.Shape) != len(shape)+1 || !slices.Equal(t.Shape[1:], shape) {
			return nil, badRequest("input %s: shape %v; model %s takes %s", t.Name, t.Shape, info.Name, want)
		}
		if err := batch(t.Shape[0]); err != nil {
			return nil, err
		}
		rowBytes := len(t.raw) / int(t.Shape[0])
		for i := 0; i < len(t.raw); i += 4 {
			if v := math.Float32frombits(binary.LittleEndian.Uint32(t.raw[i:])); math.IsNaN(float64(v)) || math.IsInf(float64(v), 0) {
				return nil, badRequest("input %s: element %d is %v; every element must be finite", t.Name, i/4, v)
			}
		}
		rows := make([]*oipRow, t.Shape[0])
		for i := range rows {
			data := t.raw[i*rowBytes : (i+1)*rowBytes]
			ev := &bus.TensorSubmitted{Meta: bus.NewMeta(bus.TypeTensorSubmitted), Owner: owner, Model: info.Name,
				ModelVersion: version, RequestID: req.ID, Input: t.Name, Datatype: bus.DatatypeFP32, Shape: shape}
			r := &oipRow{ev: ev, id: ev.ID}
			if int64(rowBytes) <= s.cfg.OIPInlineTensorBytes {
				ev.Data = data
			} else {
				// Too large for an event: stored first, the event refers to it.
				sum := sha256.Sum256(data)
				r.up = &upload{Data: data, ContentType: fiber.MIMEOctetStream, SHA256: hex.EncodeToString(sum[:])}
			}
			rows[i] = r
		}
		return rows, nil
	case "BYTES":
		if (len(t.Shape) != 1 && (len(t.Shape) != 2 || t.Shape[1] != 1)) || len(t.elems) == 0 {
			return nil, badRequest("input %s: BYTES shape %v; model %s takes %s", t.Name, t.Shape, info.Name, want)
		}
		if err := batch(int64(len(t.elems))); err != nil {
			return nil, err
		}
		rows := make([]*oipRow, len(t.elems))
		for i, data := range t.elems {
			up, err := inspectImage(data, s.cfg.MaxBodyBytes)
			if err != nil {
				return nil, badRequest("input %s, element %d: %v", t.Name, i, err)
			}
			ev := &bus.ImageSubmitted{Meta: bus.NewMeta(bus.TypeImageSubmitted), ImageID: bus.NewID(), Owner: owner, Model: info.Name, ModelVersion: version}
			rows[i] = &oipRow{ev: ev, id: ev.ID, up: up}
		}
		return rows, nil
	}
	return nil, badRequest("input %s: datatype %s; model %s takes %s", t.Name, t.Datatype, info.Name, want)
}

// inspectImage checks that data is an encoded image the service decodes
// (by its bytes, as the grade route does) with sane dimensions.
func inspectImage(data []byte, limit int64) (*upload, error) {
	if len(data) == 0 {
		return nil, fmt.Errorf("empty: want an encoded image (JPEG, PNG, GIF, WebP or BMP)")
	}
	if int64(len(data)) > limit {
		return nil, fmt.Errorf("%d bytes exceed the limit of %d", len(data), limit)
	}
	ct := http.DetectContentType(data)
	if !acceptedTypes[ct] {
		return nil, fmt.Errorf("detected %s; want an encoded image (JPEG, PNG, GIF, WebP or BMP)", ct)
	}
	cfg, _, err := image.DecodeConfig(bytes.NewReader(data))
	if err != nil {
		return nil, fmt.Errorf("the %s header cannot be decoded", ct)
	}
	if cfg.Width <= 0 || cfg.Height <= 0 || int64(cfg.Width)*int64(cfg.Height) > maxImagePixels {
		return nil, fmt.Errorf("dimensions %dx%d outside 1..%d pixels", cfg.Width, cfg.Height, maxImagePixels)
	}
	sum := sha256.Sum256(data)
	return &upload{Data: data, ContentType: ct, Width: cfg.Width, Height: cfg.Height, SHA256: hex.EncodeToString(sum[:]), colorModel: cfg.ColorModel}, nil
}

// oipTensorObject names the object of a row too large for its event.
func oipTensorObject(id string) string { return "tensors/" + id }

// oipConcurrency bounds the object puts and publishes of one request in
// flight at once.
const oipConcurrency = 8

// oipGrade stores the rows' images, publishes their events and waits for
// every result (up to the grade wait): the results in row order.
func (s *Server) oipGrade(c *fiber.Ctx, rows []*oipRow, tm *oipTiming) ([]bus.Event, error) {
	ctx := c.UserContext()
	for _, r := range rows {
		r.result = s.grades.add(r.id)
		defer s.grades.remove(r.id)
	}
	start := time.Now()
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(oipConcurrency)
	for _, r := range rows {
		g.Go(func() error {
			switch ev := r.ev.(type) {
			case *bus.ImageSubmitted:
				// A small image travels in its event, as on the grade route.
				ref, ok := inlineImage(ev.ImageID, r.up)
				if !ok {
					var err error
					if ref, err = s.storeImage(gctx, ev.ImageID, r.up); err != nil {
						return err
					}
				}
				ev.Image = ref
			case *bus.TensorSubmitted:
				if r.up != nil {
					ref, err := s.storeImage(gctx, oipTensorObject(ev.ID), r.up)
					if err != nil {
						return err
					}
					ev.Object = ref
				}
			}
			return s.publish(gctx, r.ev)
		})
	}
	if err := g.Wait(); err != nil {
		return nil, err
	}
	timer := time.NewTimer(s.cfg.GradeWait)
	defer timer.Stop()
	results := make([]bus.Event, len(rows))
	for i, r := range rows {
		select {
		case out := <-r.result:
			results[i] = out.ev
			s.writes.note(userOf(c), bus.StreamGrades, out.seq)
		case <-timer.C:
			return nil, errorf(http.StatusServiceUnavailable, "the inference service did not answer within %s (%d of %d rows graded); the grades are accepted and will complete",
				s.cfg.GradeWait, i, len(rows))
		case <-s.stopping:
			return nil, errorf(http.StatusServiceUnavailable, "the edge is shutting down; the grades are accepted and will complete")
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	tm.wait = time.Since(start)
	return results, nil
}

// oipResponseOutput is one output in the JSON of a response.
type oipResponseOutput struct {
	Name       string          `json:"name"`
	Datatype   string          `json:"datatype"`
	Shape      []int64         `json:"shape"`
	Parameters map[string]any  `json:"parameters,omitempty"`
	Data       json.RawMessage `json:"data,omitempty"`
}

// writeInferResponse writes the response: JSON only, or JSON followed by
// the binary outputs' data (Inference-Header-Content-Length says where the
// JSON ends). Its grade_ids parameter lists the grade of each row (comma
// separated: a parameter is a string), readable at /api/v1/grades/{id}.
func writeInferResponse(c *fiber.Ctx, model, version, id, gradeIDs string, outputs []*oipOutput) error {
	var tail []byte
	res := struct {
		ModelName    string              `json:"model_name"`
		ModelVersion string              `json:"model_version,omitempty"`
		ID           string              `json:"id,omitempty"`
		Parameters   map[string]any      `json:"parameters,omitempty"`
		Outputs      []oipResponseOutput `json:"outputs"`
	}{ModelName: model, ModelVersion: version, ID: id, Parameters: map[string]any{"grade_ids": gradeIDs}}
	for _, o := range outputs {
		ro := oipResponseOutput{Name: o.Name, Datatype: o.Datatype, Shape: o.Shape}
		if o.binary {
			data := o.binaryData()
			ro.Parameters = map[string]any{"binary_data_size": len(data)}
			tail = append(tail, data...)
		} else {
			ro.Data = o.jsonData()
		}
		res.Outputs = append(res.Outputs, ro)
	}
	head, err := json.Marshal(res)
	if err != nil {
		return fmt.Errorf("oip: encode response: %w", err)
	}
	if tail == nil {
		c.Set(fiber.HeaderContentType, fiber.MIMEApplicationJSON)
		return c.Send(head)
	}
	c.Set(fiber.HeaderContentType, fiber.MIMEOctetStream)
	c.Set(HeaderInferenceHeaderLength, strconv.Itoa(len(head)))
	return c.Send(append(head, tail...))
}

// oipRepositoryIndex lists every version of every model in the
// inference service's folders with its state: READY (served) or
// UNAVAILABLE with the reason (failed to load, not selected by the
// version policy, unloaded). With {"ready": true}, the READY ones only.
func (s *Server) oipRepositoryIndex(c *fiber.Ctx) error {
	var readyOnly bool
	if body := bytes.TrimSpace(c.Body()); len(body) > 0 {
		var req struct {
			Ready *bool `json:"ready"`
		}
		if err := json.Unmarshal(body, &req); err != nil {
			return badRequest("malformed repository index request: %v", err)
		}
		readyOnly = req.Ready != nil && *req.Ready
	}
	models, err := request[[]bus.ModelInfo](c.UserContext(), s, bus.SvcModelsList, bus.ModelsQuery{All: true})
	if err != nil {
		return err
	}
	out := make([]fiber.Map, 0, len(models))
	add := func(name, version, state, reason string) {
		if !readyOnly || state == "READY" {
			out = append(out, fiber.Map{"name": name, "version": version, "state": state, "reason": reason})
		}
	}
	for _, m := range models {
		switch {
		case m.State != "" && m.State != "READY":
			add(m.Name, "", m.State, m.Error)
		case len(m.Versions) == 0: // a replica older than versions
			add(m.Name, m.Version, "READY", "")
		}
		for _, v := range m.Versions {
			reason := v.Reason
			if v.Error != "" {
				reason += ": " + v.Error
			}
			add(m.Name, v.Version, v.State, reason)
		}
	}
	return c.JSON(out)
}

// oipRepositoryLoad reads the model from its folder again on every
// inference replica (after an unload, or to retry versions that failed)
// and answers 200 once it serves, 400 with the load error otherwise.
func (s *Server) oipRepositoryLoad(c *fiber.Ctx) error {
	return s.oipRepository(c, bus.ModelLoad)
}

// oipRepositoryUnload stops serving the model on every inference replica
// (grades in flight finish); it is served again after a load.
func (s *Server) oipRepositoryUnload(c *fiber.Ctx) error {
	return s.oipRepository(c, bus.ModelUnload)
}

func (s *Server) oipRepository(c *fiber.Ctx, action string) error {
	name := c.Params("model")
	if !validModel.MatchString(name) {
		return errorf(http.StatusNotFound, "unknown model %q", name)
	}
	_, err := request[bus.ModelInfo](c.UserContext(), s, bus.SvcModelsRepository, bus.ModelRepositoryQuery{Model: name, Action: action})
	var be *bus.Error
	if errors.As(err, &be) {
		switch be.Code {
		case bus.CodeNotFound:
			return errorf(http.StatusNotFound, "%s", be.Message)
		case bus.CodeBadRequest, bus.CodeUnprocessable:
			return badRequest("%s", be.Message)
		}
	}
	if err != nil {
		return err
	}
	// The next request sees the change: the list is fetched again now.
	if _, err := s.models.fetch(c.UserContext(), s); err != nil {
		s.log.Warn("model list refresh failed after a repository change", "model", name, "err", err)
	}
	c.Status(http.StatusOK)
	return nil
}
