package bus

import (
	"encoding/json"
	"os"
	"reflect"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"
)

// field is one JSON property of an event payload as the Go type encodes it.
type field struct {
	name string
	kind string // JSON Schema type
}

var (
	paramRE  = regexp.MustCompile(`\{[^}]+\}`)
	timeType = reflect.TypeOf(time.Time{})
	rawType  = reflect.TypeOf(json.RawMessage{})
)

// jsonKind maps a Go type to the JSON Schema type encoding/json produces.
func jsonKind(t reflect.Type) string {
	switch {
	case t == timeType:
		return "string"
	case t == rawType:
		return "object"
	}
	switch t.Kind() {
	case reflect.String:
		return "string"
	case reflect.Bool:
		return "boolean"
	case reflect.Int, reflect.Int64, reflect.Int32, reflect.Uint64, reflect.Uint32, reflect.Uint:
		return "integer"
	case reflect.Float64, reflect.Float32:
		return "number"
	case reflect.Slice:
		if t.Elem().Kind() == reflect.Uint8 {
			return "string" // []byte is base64
		}
		return "array"
	case reflect.Map, reflect.Struct:
		return "object"
	}
	return "unknown:" + t.String()
}

// jsonFields lists the JSON properties of t, flattening embedded structs
// the way encoding/json does.
func jsonFields(t reflect.Type) []field {
	var out []field
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		tag := f.Tag.Get("json")
		if tag == "-" {
			continue
		}
		name, _, _ := strings.Cut(tag, ",")
		if f.Anonymous && name == "" {
			out = append(out, jsonFields(f.Type)...)
			continue
		}
		if name == "" {
			name = f.Name
		}
		out = append(out, field{name, jsonKind(f.Type)})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].name < out[j].name })
	return out
}

type asyncDoc struct {
	AsyncAPI string `yaml:"asyncapi"`
	Channels map[string]struct {
		Address  string                       `yaml:"address"`
		Messages map[string]map[string]string `yaml:"messages"`
	} `yaml:"channels"`
	Components struct {
		Messages map[string]struct {
			Name    string            `yaml:"name"`
			Payload map[string]string `yaml:"payload"`
		} `yaml:"messages"`
		Schemas map[string]schema `yaml:"schemas"`
	} `yaml:"components"`
}

type schema struct {
	Type       string            `yaml:"type"`
	Required   []string          `yaml:"required"`
	Properties map[string]schema `yaml:"properties"`
	Ref        string            `yaml:"$ref"`
	AllOf      []schema          `yaml:"allOf"`
}

// TestAsyncAPIMatchesEvents fails when an event type has no channel in
// asyncapi.yaml, or when the documented payload fields or their types
// disagree with what the Go type encodes.
func TestAsyncAPIMatchesEvents(t *testing.T) {
	raw, err := os.ReadFile("asyncapi.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var doc asyncDoc
	if err := yaml.Unmarshal(raw, &doc); err != nil {
		t.Fatalf("asyncapi.yaml: %v", err)
	}
	if !strings.HasPrefix(doc.AsyncAPI, "3.") {
		t.Fatalf("asyncapi version %q, want 3.x", doc.AsyncAPI)
	}
	resolve := func(ref string) (string, bool) {
		const p = "#/components/"
		if !strings.HasPrefix(ref, p) {
			return "", false
		}
		parts := strings.Split(strings.TrimPrefix(ref, p), "/")
		return parts[len(parts)-1], len(parts) == 2
	}
	for _, typ := range EventTypes() {
		info := events[typ]
		var found bool
		for chName, ch := range doc.Channels {
			// A parameter such as {consumer} stands for one subject token.
			addr := paramRE.ReplaceAllString(ch.Address, "*")
			if addr != info.subject {
				continue
			}
			found = true
			for _, m := range ch.Messages {
				msgName, ok := resolve(m["$ref"])
				if !ok {
					t.Fatalf("channel %s: message ref %q", chName, m["$ref"])
				}
				msg, ok := doc.Components.Messages[msgName]
				if !ok {
					t.Fatalf("channel %s: message %s not in components", chName, msgName)
				}
				schemaName, _ := resolve(msg.Payload["$ref"])
				got := flattenSchema(t, doc.Components.Schemas, schemaName)
				want := jsonFields(info.goType)
				if !slices.Equal(got, want) {
					t.Errorf("%s: asyncapi payload %s\n got %v\nwant %v", typ, schemaName, got, want)
				}
			}
		}
		if !found {
			t.Errorf("event type %s (subject %s) has no channel in asyncapi.yaml", typ, info.subject)
		}
	}
}

// flattenSchema resolves allOf/$ref of a component schema into its sorted
// top-level properties.
func flattenSchema(t *testing.T, schemas map[string]schema, name string) []field {
	s, ok := schemas[name]
	if !ok {
		t.Fatalf("schema %q not in components", name)
	}
	var out []field
	var walk func(s schema)
	walk = func(s schema) {
		if s.Ref != "" {
			n := s.Ref[strings.LastIndex(s.Ref, "/")+1:]
			walk(schemas[n])
			return
		}
		for _, sub := range s.AllOf {
			walk(sub)
		}
		for p, ps := range s.Properties {
			kind := ps.Type
			if ps.Ref != "" {
				kind = "object"
			}
			out = append(out, field{p, kind})
		}
	}
	walk(s)
	sort.Slice(out, func(i, j int) bool { return out[i].name < out[j].name })
	return out
}
