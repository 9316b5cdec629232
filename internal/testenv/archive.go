package testenv

import (
	"context"
	"strings"
	"testing"

	"github.com/walship/walship/backends"
	"github.com/walship/walship/backends/fs"
	"github.com/walship/walship/backends/s3"
)

// Archive is an archive as walship's command line and a test see it.
type Archive struct {
	URL string
	// Env is what walship's environment needs to reach it (S3: the
	// server's credentials and endpoint).
	Env []string
	// Store is the archive seen directly, for what a test checks or
	// breaks behind walship's back.
	Store backends.Storage
	// Root is a filesystem archive's directory; "" on S3.
	Root string
}

// FSArchive is an archive in a new directory "archive" of w.
func FSArchive(t *testing.T, w *Workdir) Archive {
	t.Helper()
	dir := w.Mkdir(t, "archive")
	st, err := fs.New(dir)
	if err != nil {
		t.Fatal(err)
	}
	return Archive{URL: "file://" + dir, Store: st, Root: dir}
}

// S3Archive is an archive under prefix in a new bucket (its name starts
// with bucketPrefix) of the shared versitygw (StartS3). The test's own
// environment gets the server's credentials too, for its direct clients.
func S3Archive(t *testing.T, bucketPrefix, prefix string) Archive {
	t.Helper()
	srv := StartS3(t)
	bucket := RandName(bucketPrefix)
	env := []string{
		"AWS_ACCESS_KEY_ID=" + srv.AccessKey, "AWS_SECRET_ACCESS_KEY=" + srv.SecretKey,
		"AWS_EC2_METADATA_DISABLED=true", "WALSHIP_S3_ENDPOINT=" + srv.Endpoint, "WALSHIP_S3_PATH_STYLE=true",
	}
	for _, kv := range env[:3] {
		k, v, _ := strings.Cut(kv, "=")
		t.Setenv(k, v)
	}
	ctx := context.Background() // not t.Context(): the store may serve the test's cleanups
	st, err := s3.New(ctx, s3.Config{Bucket: bucket, Endpoint: srv.Endpoint, PathStyle: true})
	if err != nil {
		t.Fatal(err)
	}
	if err := st.CreateBucket(ctx); err != nil {
		t.Fatal(err)
	}
	prefixed, err := s3.New(ctx, s3.Config{Bucket: bucket, Prefix: prefix, Endpoint: srv.Endpoint, PathStyle: true})
	if err != nil {
		t.Fatal(err)
	}
	return Archive{URL: "s3://" + bucket + "/" + prefix, Env: env, Store: prefixed}
}
