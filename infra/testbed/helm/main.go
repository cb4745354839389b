// Command helm is a thin wrapper around Helm's root command (helm.sh/helm/v4/pkg/cmd), built from the Go
// module by ./build.sh for the chart tests. It does what upstream's cmd/helm/helm.go does.
package main

import (
	"errors"
	"log/slog"
	"os"

	// client auth plugins (exec, oidc) for kubeconfigs that use them
	_ "k8s.io/client-go/plugin/pkg/client/auth"

	helmcmd "helm.sh/helm/v4/pkg/cmd"
	"helm.sh/helm/v4/pkg/kube"
)

func main() {
	// the field manager name in managedFields, whatever the binary is called
	kube.ManagedFieldsManager = "helm"

	cmd, err := helmcmd.NewRootCmd(os.Stdout, os.Args[1:], helmcmd.SetupLogging)
	if err != nil {
		slog.Warn("command failed", slog.Any("error", err))
		os.Exit(1)
	}
	if err := cmd.Execute(); err != nil {
		if cerr, ok := errors.AsType[helmcmd.CommandError](err); ok {
			os.Exit(cerr.ExitCode)
		}
		os.Exit(1)
	}
}
