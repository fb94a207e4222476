module github.com/gradeline/gradeline/annotator

go 1.26.8

replace github.com/gradeline/gradeline/bus => ../bus
