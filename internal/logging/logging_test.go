package logging

import (
	"bytes"
	"errors"
	"strings"
	"testing"
	"time"
)

func TestThrottleLetsOneThroughPerInterval(t *testing.T) {
	th := Throttle{Every: time.Hour}
	if !th.Allow() {
		t.Fatal("the first message must pass")
	}
	for range 100 {
		if th.Allow() {
			t.Fatal("a second message passed within the interval")
		}
	}
}

func TestFormats(t *testing.T) {
	var text, js bytes.Buffer
	New(&text, nil, "text").Warn("hello", Err(errors.New("boom")))
	New(&js, nil, "json").Warn("hello", "code", CodeHash("0712cDoV0cfty22AeloV0daMoV02cDog"))
	if !strings.Contains(text.String(), "WRN hello") || !strings.Contains(text.String(), "boom") || strings.Contains(text.String(), "\x1b[") {
		t.Errorf("text log %q (no colour when not a terminal)", text.String())
	}
	if !strings.Contains(js.String(), `"msg":"hello"`) || strings.Contains(js.String(), "0712cDoV") {
		t.Errorf("json log %q", js.String())
	}
}
