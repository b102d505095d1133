// The hello world of Express, as its "Getting started" page writes it.
const express = require('express')
const app = express()

app.get('/hello', (req, res) => {
  res.send('hello')
})

app.listen(process.env.PORT, '127.0.0.1')
