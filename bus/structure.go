package bus

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"unicode/utf8"
)

// Structure is the part of an annotation that labelling tools and
// trainers read: an image-level Label and Boxes in pixels of the original
// image. An annotation may hold any other JSON beside them; one without
// label and boxes is free-form and has an empty Structure.
type Structure struct {
	Label string `json:"label,omitempty"`
	Boxes []Box  `json:"boxes,omitempty"`
	// Score and FromGrade are set on an annotation made from a model's
	// prediction (the grade it came from and the score it had); read when
	// well-formed, never checked.
	Score     float64 `json:"score,omitempty"`
	FromGrade string  `json:"from_grade,omitempty"`
}

// Box is a labelled rectangle: X, Y is its top-left corner, in pixels of
// the original image, Width and Height its size.
type Box struct {
	Label  string  `json:"label"`
	X      float64 `json:"x"`
	Y      float64 `json:"y"`
	Width  float64 `json:"width"`
	Height float64 `json:"height"`
}

// MaxBoxes and MaxLabelLen bound a structured annotation.
const (
	MaxBoxes    = 1000
	MaxLabelLen = 256
)

// ParseStructure reads label and boxes from an annotation and names every
// problem with them (empty when they are well-formed or absent): label a
// non-empty string, boxes a list of at most MaxBoxes objects, each with a
// label and finite x, y >= 0 and width, height > 0. Other fields are not
// looked at.
func ParseStructure(ann json.RawMessage) (Structure, []string) {
	var raw struct {
		Label     json.RawMessage `json:"label"`
		Boxes     json.RawMessage `json:"boxes"`
		Score     json.RawMessage `json:"score"`
		FromGrade json.RawMessage `json:"from_grade"`
	}
	var st Structure
	if err := json.Unmarshal(ann, &raw); err != nil {
		return st, []string{"annotation: must be a JSON object"}
	}
	var details []string
	if present(raw.Label) {
		if err := json.Unmarshal(raw.Label, &st.Label); err != nil || !validLabel(st.Label) {
			details = append(details, fmt.Sprintf("annotation.label: a non-empty string of at most %d characters", MaxLabelLen))
		}
	}
	// Read when well-formed, never refused: free-form annotations used
	// these names before they meant anything here.
	if json.Unmarshal(raw.Score, &st.Score) != nil || math.IsNaN(st.Score) || math.IsInf(st.Score, 0) {
		st.Score = 0
	}
	if json.Unmarshal(raw.FromGrade, &st.FromGrade) != nil {
		st.FromGrade = ""
	}
	if !present(raw.Boxes) {
		return st, details
	}
	var boxes []map[string]json.RawMessage
	if err := json.Unmarshal(raw.Boxes, &boxes); err != nil {
		return st, append(details, "annotation.boxes: a list of {label, x, y, width, height}")
	}
	if len(boxes) > MaxBoxes {
		return st, append(details, fmt.Sprintf("annotation.boxes: %d boxes, at most %d", len(boxes), MaxBoxes))
	}
	st.Boxes = make([]Box, len(boxes))
	for i, b := range boxes {
		at := fmt.Sprintf("annotation.boxes[%d]", i)
		if b == nil {
			details = append(details, at+": an object {label, x, y, width, height}")
			continue
		}
		if err := json.Unmarshal(b["label"], &st.Boxes[i].Label); err != nil || !validLabel(st.Boxes[i].Label) {
			details = append(details, fmt.Sprintf("%s.label: a non-empty string of at most %d characters", at, MaxLabelLen))
		}
		for _, f := range []struct {
			name     string
			dst      *float64
			positive bool
		}{{"x", &st.Boxes[i].X, false}, {"y", &st.Boxes[i].Y, false}, {"width", &st.Boxes[i].Width, true}, {"height", &st.Boxes[i].Height, true}} {
			err := json.Unmarshal(b[f.name], f.dst)
			switch {
			case err != nil || b[f.name] == nil || math.IsInf(*f.dst, 0):
				details = append(details, fmt.Sprintf("%s.%s: a number, required", at, f.name))
			case f.positive && *f.dst <= 0:
				details = append(details, fmt.Sprintf("%s.%s: must be > 0", at, f.name))
			case *f.dst < 0:
				details = append(details, fmt.Sprintf("%s.%s: must be >= 0", at, f.name))
			}
		}
	}
	return st, details
}

// Outside names the boxes that do not fit an image of width × height
// pixels.
func (s Structure) Outside(width, height int) []string {
	var details []string
	for i, b := range s.Boxes {
		if b.X+b.Width > float64(width) || b.Y+b.Height > float64(height) {
			details = append(details, fmt.Sprintf("annotation.boxes[%d]: (%g,%g) %gx%g reaches outside the %dx%d image",
				i, b.X, b.Y, b.Width, b.Height, width, height))
		}
	}
	return details
}

// Labels lists the image label and the box labels, in order of appearance.
func (s Structure) Labels() []string {
	var out []string
	if s.Label != "" {
		out = append(out, s.Label)
	}
	for _, b := range s.Boxes {
		out = append(out, b.Label)
	}
	return out
}

func present(raw json.RawMessage) bool {
	return len(raw) > 0 && !bytes.Equal(raw, []byte("null"))
}

func validLabel(l string) bool {
	return l != "" && utf8.RuneCountInString(l) <= MaxLabelLen
}
