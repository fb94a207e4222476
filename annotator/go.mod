module github.com/gradeline/gradeline/annotator

go 1.26.8

require (
	github.com/FerretDB/FerretDB v1.24.2 // indirect
	go.mongodb.org/mongo-driver/v2 v2.9.3 // indirect
)
