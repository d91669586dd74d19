module eventgate

go 1.25
