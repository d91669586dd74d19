package mock_test

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"

	"eventgate/mock"
)

// The mock is an http.Handler: serve it on a test server and call it like
// the real Event API.
func Example() {
	srv := httptest.NewServer(mock.New(mock.Options{})) // no delay, no failures
	defer srv.Close()

	resp, err := http.Get(srv.URL + "/getUserById/1")
	if err != nil {
		panic(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	fmt.Println(resp.Status)
	fmt.Println(string(body))
	// Output:
	// 200 OK
	// {"id":"1","userName":"alice","email":"alice@example.com","events":["event-1","event-3"]}
}
