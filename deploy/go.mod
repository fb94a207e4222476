module github.com/gradeline/gradeline/deploy

go 1.26.8
