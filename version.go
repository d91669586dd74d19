package main

import (
	"runtime"
	"runtime/debug"
)

// buildVersion, if set at build time (go build -ldflags "-X
// main.buildVersion=v1.2.3", the Dockerfile's VERSION argument), is the
// version; otherwise it comes from the build information Go records: the
// module version, or the VCS revision for a build from a checkout.
var buildVersion = ""

// version returns eventgate's version, and the Go version it was built
// with: "(devel)" when neither the build nor Go recorded one.
func version() (eventgate, goVersion string) {
	v := buildVersion
	if info, ok := debug.ReadBuildInfo(); ok && v == "" {
		v = info.Main.Version
		for _, s := range info.Settings {
			if s.Key == "vcs.revision" && (v == "" || v == "(devel)") && len(s.Value) >= 12 {
				v = s.Value[:12]
			}
		}
	}
	if v == "" {
		v = "(devel)"
	}
	return v, runtime.Version()
}

// userAgent is what eventgate calls itself upstream: a valid product token
// (RFC 9110 10.1.5), so "(devel)" becomes "devel".
func userAgent() string {
	v, _ := version()
	if v == "(devel)" {
		v = "devel"
	}
	return "eventgate/" + v
}
