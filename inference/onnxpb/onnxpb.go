// Package onnxpb writes ONNX models (the protobuf of onnx.proto, proto2)
// without generated code: no importable Go module carries the ONNX message
// types, and the few messages a small classifier needs are quick to encode
// with protowire. Field numbers follow onnx/onnx.proto (ONNX 1.12, IR 8).
package onnxpb

import (
	"encoding/binary"
	"math"
	"sort"

	"google.golang.org/protobuf/encoding/protowire"
)

// Versions this package writes by default.
const (
	IRVersion = 8
	Opset     = 13
)

// Element types (TensorProto.DataType).
const (
	Float = 1
	Int64 = 7
)

// Model is a ModelProto with one graph and the default operator set.
type Model struct {
	IRVersion       int64 // 0 = IRVersion
	Opset           int64 // 0 = Opset
	ProducerName    string
	ProducerVersion string
	ModelVersion    int64
	DocString       string
	// Metadata becomes metadata_props (sorted by key, so output is stable).
	Metadata map[string]string
	Graph    Graph
}

// Graph is a GraphProto.
type Graph struct {
	Name         string
	Nodes        []Node
	Initializers []Tensor
	Inputs       []ValueInfo
	Outputs      []ValueInfo
}

// Node is a NodeProto of the default domain.
type Node struct {
	Name    string
	OpType  string
	Inputs  []string
	Outputs []string
	Attrs   []Attr
}

// Attr is an AttributeProto; build it with Int, Ints, Float_ or Floats.
type Attr struct {
	Name   string
	typ    int32
	f      float32
	i      int64
	ints   []int64
	floats []float32
}

// Attribute types (AttributeProto.AttributeType).
const (
	attrFloat  = 1
	attrInt    = 2
	attrFloats = 6
	attrInts   = 7
)

// Int is an INT attribute.
func Int(name string, v int64) Attr { return Attr{Name: name, typ: attrInt, i: v} }

// Ints is an INTS attribute.
func Ints(name string, v ...int64) Attr { return Attr{Name: name, typ: attrInts, ints: v} }

// FloatAttr is a FLOAT attribute.
func FloatAttr(name string, v float32) Attr { return Attr{Name: name, typ: attrFloat, f: v} }

// Floats is a FLOATS attribute.
func Floats(name string, v ...float32) Attr { return Attr{Name: name, typ: attrFloats, floats: v} }

// Tensor is a TensorProto stored as raw little-endian data. Exactly one of
// Float and Int64 is used.
type Tensor struct {
	Name  string
	Dims  []int64
	Float []float32
	Int64 []int64
}

// Dim is one dimension of a ValueInfo: a fixed size, or a symbolic name
// (Param) for a size known only at run time, like the batch.
type Dim struct {
	Value int64
	Param string
}

// ValueInfo is a ValueInfoProto of a tensor type.
type ValueInfo struct {
	Name     string
	ElemType int32
	Shape    []Dim
}

// Marshal encodes the model as the bytes of a .onnx file.
func (m *Model) Marshal() []byte {
	ir, opset := m.IRVersion, m.Opset
	if ir == 0 {
		ir = IRVersion
	}
	if opset == 0 {
		opset = Opset
	}
	var b []byte
	b = appendVarint(b, 1, uint64(ir))
	b = appendString(b, 2, m.ProducerName)
	b = appendString(b, 3, m.ProducerVersion)
	if m.ModelVersion != 0 {
		b = appendVarint(b, 5, uint64(m.ModelVersion))
	}
	b = appendString(b, 6, m.DocString)
	b = appendMessage(b, 7, m.Graph.marshal())
	// OperatorSetIdProto{domain: "" (default), version}.
	b = appendMessage(b, 8, appendVarint(nil, 2, uint64(opset)))
	keys := make([]string, 0, len(m.Metadata))
	for k := range m.Metadata {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		var e []byte
		e = appendString(e, 1, k)
		e = appendString(e, 2, m.Metadata[k])
		b = appendMessage(b, 14, e)
	}
	return b
}

func (g *Graph) marshal() []byte {
	var b []byte
	for _, n := range g.Nodes {
		b = appendMessage(b, 1, n.marshal())
	}
	b = appendString(b, 2, g.Name)
	for _, t := range g.Initializers {
		b = appendMessage(b, 5, t.marshal())
	}
	for _, v := range g.Inputs {
		b = appendMessage(b, 11, v.marshal())
	}
	for _, v := range g.Outputs {
		b = appendMessage(b, 12, v.marshal())
	}
	return b
}

func (n *Node) marshal() []byte {
	var b []byte
	for _, s := range n.Inputs {
		b = appendStringAlways(b, 1, s) // "" is a valid (omitted optional) input
	}
	for _, s := range n.Outputs {
		b = appendStringAlways(b, 2, s)
	}
	b = appendString(b, 3, n.Name)
	b = appendString(b, 4, n.OpType)
	for _, a := range n.Attrs {
		b = appendMessage(b, 5, a.marshal())
	}
	return b
}

func (a *Attr) marshal() []byte {
	var b []byte
	b = appendString(b, 1, a.Name)
	switch a.typ {
	case attrFloat:
		b = protowire.AppendTag(b, 2, protowire.Fixed32Type)
		b = protowire.AppendFixed32(b, math.Float32bits(a.f))
	case attrInt:
		b = appendVarint(b, 3, uint64(a.i))
	case attrFloats:
		for _, f := range a.floats {
			b = protowire.AppendTag(b, 7, protowire.Fixed32Type)
			b = protowire.AppendFixed32(b, math.Float32bits(f))
		}
	case attrInts:
		for _, i := range a.ints {
			b = appendVarint(b, 8, uint64(i))
		}
	}
	b = appendVarint(b, 20, uint64(a.typ))
	return b
}

func (t *Tensor) marshal() []byte {
	var b []byte
	for _, d := range t.Dims {
		b = appendVarint(b, 1, uint64(d))
	}
	var raw []byte
	if t.Int64 != nil {
		b = appendVarint(b, 2, Int64)
		raw = make([]byte, 8*len(t.Int64))
		for i, v := range t.Int64 {
			binary.LittleEndian.PutUint64(raw[8*i:], uint64(v))
		}
	} else {
		b = appendVarint(b, 2, Float)
		raw = make([]byte, 4*len(t.Float))
		for i, v := range t.Float {
			binary.LittleEndian.PutUint32(raw[4*i:], math.Float32bits(v))
		}
	}
	b = appendString(b, 8, t.Name)
	b = protowire.AppendTag(b, 9, protowire.BytesType)
	b = protowire.AppendBytes(b, raw)
	return b
}

func (v *ValueInfo) marshal() []byte {
	var shape []byte
	for _, d := range v.Shape {
		var dim []byte
		if d.Param != "" {
			dim = appendString(dim, 2, d.Param)
		} else {
			dim = appendVarint(dim, 1, uint64(d.Value))
		}
		shape = appendMessage(shape, 1, dim)
	}
	var tensor []byte
	tensor = appendVarint(tensor, 1, uint64(v.ElemType))
	tensor = appendMessage(tensor, 2, shape)
	typ := appendMessage(nil, 1, tensor) // TypeProto.tensor_type
	var b []byte
	b = appendString(b, 1, v.Name)
	b = appendMessage(b, 2, typ)
	return b
}

func appendVarint(b []byte, num protowire.Number, v uint64) []byte {
	b = protowire.AppendTag(b, num, protowire.VarintType)
	return protowire.AppendVarint(b, v)
}

// appendString omits empty strings: every string field written here is
// optional.
func appendString(b []byte, num protowire.Number, s string) []byte {
	if s == "" {
		return b
	}
	return appendStringAlways(b, num, s)
}

func appendStringAlways(b []byte, num protowire.Number, s string) []byte {
	b = protowire.AppendTag(b, num, protowire.BytesType)
	return protowire.AppendString(b, s)
}

func appendMessage(b []byte, num protowire.Number, msg []byte) []byte {
	b = protowire.AppendTag(b, num, protowire.BytesType)
	return protowire.AppendBytes(b, msg)
}
