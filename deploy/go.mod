module github.com/gradeline/gradeline/deploy

go 1.26.8

require (
	github.com/gradeline/gradeline/analytics v0.0.0
	github.com/gradeline/gradeline/annotator v0.0.0
	github.com/gradeline/gradeline/bus v0.0.0
	github.com/gradeline/gradeline/inference v0.0.0
	github.com/gradeline/gradeline/ingest v0.0.0
)

replace (
	github.com/gradeline/gradeline/analytics => ../analytics
	github.com/gradeline/gradeline/annotator => ../annotator
	github.com/gradeline/gradeline/bus => ../bus
	github.com/gradeline/gradeline/inference => ../inference
	github.com/gradeline/gradeline/ingest => ../ingest
)
