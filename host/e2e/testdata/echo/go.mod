module example.com/echo

go 1.26.8

require github.com/plugd/plugd v0.0.0-00010101000000-000000000000
