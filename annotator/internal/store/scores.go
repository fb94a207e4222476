package store

import (
	"fmt"
	"slices"
	"strconv"
	"strings"

	"go.mongodb.org/mongo-driver/v2/bson"
)

// A scoreSet is a grade's score per label, stored as a subdocument keyed
// by label ({"Bag": 0.91, "Coat": 0.02}), as MongoDB users read it. A
// label may be any text, so a key escapes what MongoDB keys may not hold
// (see scoreKey). Grades stored before this form hold a list of
// {label, score} documents, which is still read; it cost FerretDB about
// twice as much to store (a document of its own per label:
// BenchmarkStoreGrades, 300 against 175 µs per result).
type scoreSet map[string]float64

// MarshalBSONValue writes the subdocument, keys in label order.
func (s scoreSet) MarshalBSONValue() (byte, []byte, error) {
	labels := make([]string, 0, len(s))
	for l := range s {
		labels = append(labels, l)
	}
	slices.Sort(labels)
	d := make(bson.D, len(labels))
	for i, l := range labels {
		d[i] = bson.E{Key: scoreKey(l), Value: s[l]}
	}
	t, data, err := bson.MarshalValue(d)
	return byte(t), data, err
}

// UnmarshalBSONValue reads the subdocument, or the list of the earlier form.
func (s *scoreSet) UnmarshalBSONValue(t byte, data []byte) error {
	switch bson.Type(t) {
	case bson.TypeNull, bson.TypeUndefined:
		*s = nil
		return nil
	case bson.TypeArray:
		var list []struct {
			Label string  `bson:"label"`
			Score float64 `bson:"score"`
		}
		if err := bson.UnmarshalValue(bson.TypeArray, data, &list); err != nil {
			return fmt.Errorf("store: scores list: %w", err)
		}
		*s = make(scoreSet, len(list))
		for _, ls := range list {
			(*s)[ls.Label] = ls.Score
		}
		return nil
	case bson.TypeEmbeddedDocument:
		elems, err := bson.Raw(data).Elements()
		if err != nil {
			return fmt.Errorf("store: scores: %w", err)
		}
		*s = make(scoreSet, len(elems))
		for _, e := range elems {
			v, ok := e.Value().AsFloat64OK()
			if !ok {
				return fmt.Errorf("store: score %q is a %s, not a number", e.Key(), e.Value().Type)
			}
			(*s)[labelOfKey(e.Key())] = v
		}
		return nil
	}
	return fmt.Errorf("store: scores stored as %s", bson.Type(t))
}

// scoreKey is the key of label: MongoDB keys may not contain '.' or NUL
// nor start with '$', so those bytes and '%' itself are written %XX, and
// the empty label (no key may be empty on every server) is "%".
// labelOfKey reverses it.
func scoreKey(label string) string {
	if label == "" {
		return "%"
	}
	if !strings.ContainsAny(label, "%.$\x00") {
		return label
	}
	var b strings.Builder
	for i := 0; i < len(label); i++ {
		switch c := label[i]; c {
		case '%', '.', '$', 0:
			fmt.Fprintf(&b, "%%%02X", c)
		default:
			b.WriteByte(c)
		}
	}
	return b.String()
}

func labelOfKey(key string) string {
	if key == "%" {
		return ""
	}
	if !strings.Contains(key, "%") {
		return key
	}
	var b strings.Builder
	for i := 0; i < len(key); i++ {
		if key[i] == '%' && i+2 < len(key) {
			if c, err := strconv.ParseUint(key[i+1:i+3], 16, 8); err == nil {
				b.WriteByte(byte(c))
				i += 2
				continue
			}
		}
		b.WriteByte(key[i])
	}
	return b.String()
}
