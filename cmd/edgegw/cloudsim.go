package main

import (
	"context"
	"io"

	"github.com/edgegw/edgegw/uplink/cloudsim"
)

func init() {
	commands["cloudsim"] = func(ctx context.Context, args []string, _ io.Reader, stdout, stderr io.Writer) error {
		return cloudsim.Main(ctx, args, stdout, stderr)
	}
}
