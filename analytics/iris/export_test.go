package iris

// CountsFallbacks exposes, to the tests, how many counts queries met
// MaxCountedValues and fell back to the direct query.
var CountsFallbacks = &countsFallbacks

// ReadsInOrder exposes the choice of plan for a page whose filter bounds
// another column.
var ReadsInOrder = readsInOrder

// MaxCountedValuesVar lets the tests lower the bound on counted values.
var MaxCountedValuesVar = &maxCountedValues
