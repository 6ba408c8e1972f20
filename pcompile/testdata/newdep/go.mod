module example.com/newdep

go 1.26.8

// A later commit of httprouter than the host's v1.3.0: MVS selects it for
// the whole workspace, so the plugin would carry a different httprouter
// than the host, and pcompile must refuse to build it.
require (
	github.com/julienschmidt/httprouter v1.3.1-0.20200921135023-fe77dd05ab5a
	github.com/plugd/plugd v0.0.0-00010101000000-000000000000
)

require (
	github.com/sirupsen/logrus v1.10.2 // indirect
	golang.org/x/sys v0.49.0 // indirect
)

replace github.com/plugd/plugd => ../../..
