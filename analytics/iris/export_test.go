package iris

// CountsFallbacks exposes, to the tests, how many counts queries met
// MaxCountedValues and fell back to the direct query.
var CountsFallbacks = &countsFallbacks
