"""Data shipped with packager: task suites, the perplexity corpus builder inputs, default recipes."""
