package fakewx_test

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"

	"github.com/wxlogin/wxlogin/internal/fakewx"
)

func ExampleOpenID() {
	id := fakewx.OpenID(fakewx.DemoAppID, "0712cDoV0cfty22AeloV0daMoV02cDog")
	fmt.Println(len(id), id[:1], id == fakewx.OpenID(fakewx.DemoAppID, "0712cDoV0cfty22AeloV0daMoV02cDog"))
	// Output: 28 o true
}

func ExampleServer_Script() {
	fake := fakewx.New(fakewx.Config{Apps: []fakewx.App{fakewx.DemoApp()}})
	srv := httptest.NewServer(fake)
	defer srv.Close()

	// WeChat is busy once, then the code works once, then it is used up.
	fake.Script("0712cDoV0cfty22AeloV0daMoV02cDog", fakewx.Busy())
	q := url.Values{
		"appid":      {fakewx.DemoAppID},
		"secret":     {fakewx.DemoSecret},
		"js_code":    {"0712cDoV0cfty22AeloV0daMoV02cDog"},
		"grant_type": {"authorization_code"},
	}
	for range 3 {
		resp, err := http.Get(srv.URL + fakewx.Path + "?" + q.Encode())
		if err != nil {
			fmt.Println(err)
			return
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		var answer struct {
			Errcode int    `json:"errcode"`
			OpenID  string `json:"openid"`
		}
		json.Unmarshal(body, &answer)
		fmt.Println(answer.Errcode, answer.OpenID == fakewx.OpenID(fakewx.DemoAppID, "0712cDoV0cfty22AeloV0daMoV02cDog"))
	}
	fmt.Println(fake.Calls("0712cDoV0cfty22AeloV0daMoV02cDog"))
	// Output:
	// -1 false
	// 0 true
	// 40163 false
	// 3
}
