//go:build tools

// Package tools pins the Helm command this wrapper module builds (see go.mod).
package tools

import _ "helm.sh/helm/v4/cmd/helm"
