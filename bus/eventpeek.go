package bus

// peekType returns the value of the top-level "type" member of a JSON
// object, found by scanning the text without decoding it, so that Decode
// decodes an event once, straight into its type. It reports false whenever
// it cannot be sure (not an object, no such member, escapes in the key or
// the value, text that is not JSON): Decode then takes the careful path.
// The decoded event's own type is compared with it afterwards, which covers
// what encoding/json does differently (the last of duplicate members wins,
// keys match case-insensitively).
func peekType(data []byte) (string, bool) { return peekMember(data, "type") }

// PeekGradeID returns the grade_id of a grade result event without
// decoding it, or false when it cannot tell (as peekType): a reader that
// wants only some grades skips the others undecoded. Results come from
// inference alone; a text that encoding/json would read differently
// (duplicate or case-variant keys) may be skipped by mistake, never
// accepted.
func PeekGradeID(data []byte) (string, bool) { return peekMember(data, "grade_id") }

// peekMember returns the string value of the first top-level member key
// of a JSON object, by scanning the text.
func peekMember(data []byte, key string) (string, bool) {
	i := skipSpace(data, 0)
	if i >= len(data) || data[i] != '{' {
		return "", false
	}
	i++
	for {
		i = skipSpace(data, i)
		if i >= len(data) || data[i] != '"' {
			return "", false
		}
		k, next, ok := plainString(data, i)
		if !ok {
			return "", false
		}
		i = skipSpace(data, next)
		if i >= len(data) || data[i] != ':' {
			return "", false
		}
		i = skipSpace(data, i+1)
		if k == key {
			if i >= len(data) || data[i] != '"' {
				return "", false
			}
			v, _, ok := plainString(data, i)
			return v, ok
		}
		if i = skipValue(data, i); i < 0 {
			return "", false
		}
		i = skipSpace(data, i)
		if i >= len(data) || data[i] != ',' {
			return "", false // '}' (no such member) or not JSON
		}
		i++
	}
}

func skipSpace(data []byte, i int) int {
	for i < len(data) && (data[i] == ' ' || data[i] == '\t' || data[i] == '\n' || data[i] == '\r') {
		i++
	}
	return i
}

// plainString reads the string starting at data[i] ('"'); ok is false when
// it holds an escape or is not terminated.
func plainString(data []byte, i int) (s string, next int, ok bool) {
	for j := i + 1; j < len(data); j++ {
		switch data[j] {
		case '"':
			return string(data[i+1 : j]), j + 1, true
		case '\\':
			return "", 0, false
		}
	}
	return "", 0, false
}

// skipValue returns the index after the value starting at data[i], or -1.
// It only balances brackets outside strings: whether the text is JSON is
// the decoder's concern.
func skipValue(data []byte, i int) int {
	depth := 0
	for ; i < len(data); i++ {
		switch c := data[i]; c {
		case '"':
			for i++; i < len(data) && data[i] != '"'; i++ {
				if data[i] == '\\' {
					i++
				}
			}
			if i >= len(data) {
				return -1
			}
			if depth == 0 {
				return i + 1
			}
		case '{', '[':
			depth++
		case '}', ']':
			if depth == 0 {
				return i // the end of the enclosing object
			}
			depth--
			if depth == 0 {
				return i + 1
			}
		case ',':
			if depth == 0 {
				return i
			}
		}
	}
	return -1
}
