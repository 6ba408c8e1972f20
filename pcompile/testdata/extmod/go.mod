module example.com/extmod

go 1.26.8

require (
	github.com/plugd/plugd v0.0.0-00010101000000-000000000000
	// Older than the host's logrus: MVS selects the host's, so it builds.
	github.com/sirupsen/logrus v1.9.3
)

require golang.org/x/sys v0.0.0-20220715151400-c0bba94af5f8 // indirect

// Lets editors resolve the SDK in the repo; pcompile drops this and uses
// the host's source tree through its workspace instead.
replace github.com/plugd/plugd => ../../..
