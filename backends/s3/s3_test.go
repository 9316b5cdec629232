package s3_test

import (
	"bytes"
	"context"
	"errors"
	"os"
	"testing"

	"github.com/walship/walship/backends"
	"github.com/walship/walship/backends/s3"
	"github.com/walship/walship/backends/storagetest"
	"github.com/walship/walship/internal/testenv"
)

func TestMain(m *testing.M) {
	code := m.Run()
	testenv.StopS3()
	os.Exit(code)
}

func newStore(t *testing.T, srv *testenv.S3, bucket, prefix string) *s3.Storage {
	t.Helper()
	t.Setenv("AWS_ACCESS_KEY_ID", srv.AccessKey)
	t.Setenv("AWS_SECRET_ACCESS_KEY", srv.SecretKey)
	t.Setenv("AWS_EC2_METADATA_DISABLED", "true")
	s, err := s3.New(context.Background(), s3.Config{
		Bucket: bucket, Prefix: prefix, Endpoint: srv.Endpoint, Region: srv.Region, PathStyle: true,
		PartSize: 5 << 20,
	})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestConformance(t *testing.T) {
	srv := testenv.StartS3(t)
	bucket := testenv.RandName("conf")
	if err := newStore(t, srv, bucket, "").CreateBucket(context.Background()); err != nil {
		t.Fatal(err)
	}
	storagetest.Run(t, func(t *testing.T) backends.Storage {
		return newStore(t, srv, bucket, testenv.RandName("p"))
	}, storagetest.Options{LargeSize: 12 << 20}) // three parts at 5 MiB
}

func TestMissingBucketIsNotNotFound(t *testing.T) {
	srv := testenv.StartS3(t)
	s := newStore(t, srv, testenv.RandName("nobucket"), "")
	ctx := context.Background()
	err := s.List(ctx, "wal/", func(backends.ObjectInfo) error { return nil })
	if err == nil || errors.Is(err, backends.ErrNotFound) {
		t.Fatalf("List on a missing bucket: %v", err)
	}
	if err := s.PutIfAbsent(ctx, "x", bytes.NewReader([]byte("x")), 1); err == nil {
		t.Fatal("put into a missing bucket succeeded")
	}
}

func TestWrongCredentialsArePermanentAndSecretFree(t *testing.T) {
	srv := testenv.StartS3(t)
	bucket := testenv.RandName("cred")
	if err := newStore(t, srv, bucket, "").CreateBucket(context.Background()); err != nil {
		t.Fatal(err)
	}
	bad := *srv
	bad.SecretKey = "not-the-secret-0123456789"
	s := newStore(t, &bad, bucket, "")
	_, _, err := s.Get(context.Background(), "identity")
	if err == nil || errors.Is(err, backends.ErrNotFound) {
		t.Fatalf("Get with a wrong secret: %v, want an access error", err)
	}
	if !backends.IsPermanent(err) {
		t.Errorf("wrong credentials not permanent: %v", err)
	}
	if bytes.Contains([]byte(err.Error()), []byte(bad.SecretKey)) {
		t.Errorf("error contains the secret: %v", err)
	}
}
