module github.com/gradeline/gradeline/inference

go 1.26.8

require github.com/gradeline/gradeline/bus v0.0.0

replace github.com/gradeline/gradeline/bus => ../bus
