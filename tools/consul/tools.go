//go:build tools

// Package tools pins the Consul agent the tests run against: v1.16.1, the
// last release under the Mozilla Public License 2.0 (later ones are under
// the Business Source License). scripts/services builds it from this module
// (`go build github.com/hashicorp/consul`), so the Go module proxy is the
// only source; `go install` refuses Consul's own replace directives.
package tools

import _ "github.com/hashicorp/consul"
